"""maft.report.html: the static HTML report of a run or comparison directory, built from fixture files
(no model, no training), checked as files and in headless Chromium."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_tables import Grids, markdown_grids, rich_grid

from maft.compare import MethodResult, comparison_markdown, comparison_table
from maft.config import RunConfig
from maft.debate.transcript import Turn
from maft.evaluation.metrics import Accuracy, Compute, DebateMetrics, Diversity, IterationMetrics, TrainStats
from maft.report.html import asset, write_report
from maft.report.summary import iteration_table, summary_markdown
from maft.store import RunStore, write_json, write_jsonl, write_text

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
except ImportError:  # the browser tests skip (or fail, with MAFT_REQUIRE_BROWSER=1)
    webdriver = None

PNG = b"\x89PNG\r\n\x1a\n"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
BROWSER_MISSING = "headless Chromium not installed: apt-get install chromium chromium-driver"
NASTY = "</script><b>not bold</b>"  # must reach the page as text, never as markup


# -- fixtures: run and comparison directories from the pydantic models ---------------------------------
def acc(mean: float, se: float = 0.05, n: int = 3) -> Accuracy:
    return Accuracy(mean=mean, se=se, n=n)


def make_turns(iteration: int, problems: int, agents: int, rounds: int) -> list[Turn]:
    turns = []
    for m in range(1, rounds + 1):
        for i in range(problems):
            question = f"What is {i} + {i}?"
            for n in range(agents):
                correct = (i + n + m + iteration) % 3 != 0
                answer = None if (i, n, m) == (0, 1, 1) else str(2 * i if correct else 2 * i + 1)
                correct = correct and answer is not None
                messages = [{"role": "user", "content": question}]
                if m > 1:
                    messages += [
                        {"role": "assistant", "content": f"previous answer of agent {n}"},
                        {"role": "user", "content": f"The other agents answered {2 * i}. Update your answer."},
                    ]
                response = f"iteration {iteration}, agent {n}, round {m}: the answer is {answer}"
                if (i, n, m) == (1, 0, 1):
                    response += " " + NASTY
                turns.append(
                    Turn(
                        problem_id=f"p{i:02d}",
                        agent=n,
                        round=m,
                        adapter=None,
                        messages=messages,
                        response=response,
                        answer=answer,
                        correct=correct,
                        completion_tokens=10 + i,
                    )
                )
    return turns


def make_metrics(it: int, agents: int, rounds: int, diversity: bool, paper: bool = False) -> IterationMetrics:
    test = DebateMetrics(
        problems=3,
        majority=acc(0.5 + 0.1 * it),
        round_agent=[acc(0.4 + 0.1 * it + 0.01 * r) for r in range(rounds)],
        round_majority=[acc(0.45 + 0.1 * it + 0.01 * r) for r in range(rounds)],
        agent_round=[[acc(0.3 + 0.1 * it + 0.01 * n + 0.001 * r) for r in range(rounds)] for n in range(agents)],
        unanimous=0.25,
        pairwise_agreement=0.5,
        abstention_rate=0.0,
        generated_tokens=100,
    )
    train = None
    if it > 0:
        data = {f"agent_{n}": {"generation": 4, "critic": 3} for n in range(agents)}
        train = TrainStats(
            problems=6, labelled=6, unanimous=0.5, label_precision=acc(0.75), data=data, losses={"gen_0": 1.0}
        )
    div = None
    if diversity:
        div = Diversity(
            agents=agents,
            problems=3,
            answer_agreement=0.8 - 0.1 * it,
            consensus=0.6 - 0.1 * it,
            cross_nll=1.5 + 0.25 * it,
            self_nll=1.0,
            kl=0.5 + 0.125 * it,
        )
        if paper:  # diversity.paper_likelihoods: the critics' final round and each role's KL from the base model
            by_role = {
                f"{kind}_{n}": 0.01 * it * (n + 1) + (0.005 * it if kind == "critic" else 0.0)
                for kind in ("gen", "critic")
                for n in range(agents)
            }
            div = div.model_copy(
                update={
                    "critic_round": rounds,
                    "critic_cross_nll": 1.25 + 0.125 * it,
                    "critic_self_nll": 0.75,
                    "critic_kl": 0.5 + 0.0625 * it,
                    "kl_from_base": sum(by_role.values()) / len(by_role),
                    "kl_from_base_by_role": by_role,
                }
            )
    compute = Compute(
        train_generated_tokens=1000 * it,
        test_generated_tokens=100,
        train_examples=14 * it,
        train_seconds=10.0 * it,
        seconds=20.0 + 10 * it,
    )
    return IterationMetrics(
        iteration=it, test=test, train=train, seconds={"debate_test": 5.0 + it}, compute=compute, diversity=div
    )


def make_run(
    root: Path,
    *,
    iterations: int = 2,
    agents: int = 2,
    rounds: int = 2,
    problems: int = 3,
    diversity: bool = True,
    paper: bool = False,
) -> tuple[list[IterationMetrics], list[Turn]]:
    """A finished run directory: config.yaml, manifest.json, metrics.json, iter_<l>/debate_test.jsonl."""
    config = RunConfig.model_validate(
        {
            "iterations": iterations,
            "debate": {"agents": agents, "rounds": rounds},
            "task": {"n_train": 2 * problems, "n_test": problems},
        }
    )
    write_text(root / "config.yaml", config.to_yaml())
    write_json(root / "manifest.json", {"config_hash": config.hash(), "stages": {}})
    metrics = [make_metrics(it, agents, rounds, diversity, paper) for it in range(iterations + 1)]
    write_json(root / "metrics.json", [m.model_dump(mode="json") for m in metrics])
    turns = []
    for it in range(iterations + 1):
        write_jsonl(root / f"iter_{it}" / "debate_test.jsonl", t := make_turns(it, problems, agents, rounds))
        turns += t
    return metrics, turns


METHODS = [  # method, finetunes, gold labels, iterations, agents, rounds, diversity
    ("maft", True, False, 2, 2, 2, True),
    ("star", True, True, 2, 2, 2, False),
    ("debate", False, False, 0, 2, 2, True),
    ("single", False, False, 0, 1, 1, False),
]


def make_comparison(root: Path, paper: bool = False) -> tuple[list[MethodResult], dict[str, list[Turn]]]:
    """``paper``: maft and debate measured the paper's likelihoods too."""
    results, turns = [], {}
    for method, finetunes, gold, iterations, agents, rounds, diversity in METHODS:
        metrics, turns[method] = make_run(
            root / method,
            iterations=iterations,
            agents=agents,
            rounds=rounds,
            diversity=diversity,
            paper=paper and diversity,
        )
        bonus = {"maft": 0.02, "star": 0.01, "debate": 0.04, "single": -0.05}[method]
        results.append(
            MethodResult(
                method=method,
                description=f"the {method} method",
                run_dir=method,
                uses_gold_labels=gold,
                finetunes=finetunes,
                accuracy=[acc(m.test.majority.mean + bonus) for m in metrics],
                compute=[m.compute for m in metrics],
                diversity=[m.diversity for m in metrics],
            )
        )
    write_json(root / "comparison.json", [r.model_dump(mode="json") for r in results])
    return results, turns


def read_transcripts(report: Path) -> tuple[list[dict], dict[str, str]]:
    text = (report / "transcripts.js").read_text()
    records, questions = text.split("\n")[:2]
    prefix_r, prefix_q = "window.MAFT_TRANSCRIPTS = ", "window.MAFT_QUESTIONS = "
    assert records.startswith(prefix_r) and questions.startswith(prefix_q)
    return json.loads(records[len(prefix_r) : -1]), json.loads(questions[len(prefix_q) : -1])


def assert_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100


# -- files -----------------------------------------------------------------------------------------------
def test_run_report(tmp_path):
    run = tmp_path / "run"
    metrics, turns = make_run(run)
    index = write_report(run)
    out = run / "report"
    assert index == out / "index.html"
    for name in ("accuracy.png", "diversity.png"):
        assert_png(out / name)
    html = index.read_text()
    for id in ("iterations", "diversity-table", "agents"):
        assert f'class="metrics" id="{id}"' in html
    assert '<img src="accuracy.png"' in html and '<img src="diversity.png"' in html
    iterations = html.split('id="iterations"')[1].split("</table>")[0]
    assert iterations.count("<tr>") == 1 + len(metrics)
    assert "<td>70.0 ± 5.0</td>" in iterations  # iteration 2's majority
    assert "<td>2,100</td><td>28</td>" in iterations  # iteration 2's generated tokens and training examples
    assert "<td>0.6000</td>" in html.split('id="diversity-table"')[1]  # iteration 2's answer agreement
    assert 'id="likelihood-table"' not in html and "critic KL" not in html  # not measured: not shown
    assert "2 x 2 (answers summaries)" in html and "6 train / 3 held-out" in html
    assert "transcripts.js" in html and "https://" not in html and "http://" not in html

    records, questions = read_transcripts(out)
    assert len(records) == len(turns) == 3 * 12
    assert {r["method"] for r in records} == {""}
    assert questions == {"p00": "What is 0 + 0?", "p01": "What is 1 + 1?", "p02": "What is 2 + 2?"}
    first, critic = records[0], next(r for r in records if r["round"] == 2)
    assert first["answer"] == turns[0].answer and first["response"] == turns[0].response and "critic" not in first
    assert critic["critic"].startswith("The other agents answered")
    assert "</script" not in (out / "transcripts.js").read_text()  # escaped as <\/script
    assert sum(r["response"].endswith(NASTY) for r in records) == 3


def test_comparison_report(tmp_path):
    root = tmp_path / "cmp"
    results, turns = make_comparison(root)
    index = write_report(root, tmp_path / "elsewhere")
    assert index == tmp_path / "elsewhere" / "index.html"
    assert_png(index.parent / "accuracy.png")
    assert_png(index.parent / "diversity.png")
    html = index.read_text()
    table = html.split('id="comparison"')[1].split("</table>")[0]
    assert table.count("<tr>") == 1 + len(METHODS)
    maft_row = table.split('<td class="l">maft</td>')[1].split("</tr>")[0]
    assert "<td>52.0 ± 5.0</td><td>72.0 ± 5.0 (iter 2)</td>" in maft_row  # iteration 0, final iteration
    assert "<td>72.0 ± 5.0 (iter 2)</td><td>3,300</td>" in maft_row  # best iteration; tokens: 100 + 1100 + 2100
    assert "<td>42</td><td>90</td>" in maft_row and '<td class="l">majority</td>' in maft_row
    assert '<td class="l">gold</td>' in table.split('<td class="l">star</td>')[1].split("</tr>")[0]
    single_row = table.split('<td class="l">single</td>')[1].split("</tr>")[0]
    assert "<td>45.0 ± 5.0</td><td>45.0 ± 5.0</td><td>-</td>" in single_row  # no finetuning: no best iteration
    assert "picked on the same held-out problems it reports" in html  # the best iteration is descriptive
    per_iteration = html.split('id="accuracy-table"')[1].split("</table>")[0]
    assert '<td class="l">single</td><td>45.0 ± 5.0</td><td>-</td><td>-</td>' in per_iteration
    diversity = html.split('id="diversity-table"')[1].split("</table>")[0]
    assert all(f'<td class="l">{m}</td>' in diversity for m in ("maft", "debate"))
    assert '<td class="l">star</td>' not in diversity
    assert "maft comparison:" in html

    records, _ = read_transcripts(index.parent)
    assert len(records) == sum(len(t) for t in turns.values()) == 36 + 36 + 12 + 3
    assert [r["method"] for r in records] == [m for m, ts in turns.items() for _ in ts]


def test_no_diversity(tmp_path):
    run = tmp_path / "run"
    make_run(run, diversity=False)
    (run / "report").mkdir()
    (run / "report" / "diversity.png").write_bytes(PNG)  # stale, from an earlier report
    html = write_report(run).read_text()
    assert not (run / "report" / "diversity.png").exists()
    assert "diversity.png" not in html.replace("diversity.png was not written", "")
    assert "No diversity data" in html and 'id="diversity-table"' not in html
    assert_png(run / "report" / "accuracy.png")


@pytest.mark.parametrize("make", [lambda p: None, lambda p: p.mkdir(), lambda p: write_text(p / "x.txt", "")])
def test_not_a_report_source(tmp_path, make):
    source = tmp_path / "nothing"
    make(source)
    with pytest.raises(
        FileNotFoundError,
        match=r"nothing .*expected a finished run directory \(with metrics.json\) "
        r"or a comparison directory \(with comparison.json\)",
    ):
        write_report(source)


# -- one set of numbers: the console, summary.md / comparison.md and the report ---------------------------
ITERATIONS = "Accuracy on held-out problems, per iteration"
DIVERSITY = "Diversity of the agents' round-1 responses"
LIKELIHOODS = "The paper's likelihood measures: the final round and each role's distance from the base model"
METHODS_TABLE = "Accuracy % ± SE on held-out problems (final-round majority vote)"


def test_summary_console_and_report_show_the_same_numbers(tmp_path):
    run = tmp_path / "run"
    metrics, _ = make_run(run, paper=True)
    manifest = {
        "config_hash": "abc",
        "stages": {"iter_0/debate_test": {"seconds": 3.25}, "iter_1/metrics": {"seconds": 1.0}},
    }
    md = dict(markdown_grids(summary_markdown(RunStore.saved_config(run), metrics, manifest)).tables)
    page = dict(Grids(write_report(run).read_text()).tables)
    assert list(page) == [ITERATIONS, DIVERSITY, LIKELIHOODS, "Per agent and round (held-out accuracy %)"]
    assert list(md) == [
        ITERATIONS,
        "Per agent and round (held-out accuracy %)",
        DIVERSITY,
        LIKELIHOODS,
        "Stage times (seconds)",
    ]
    assert all(page[title] == md[title] for title in page)
    assert rich_grid(iteration_table(metrics)) == md[ITERATIONS]
    assert md[ITERATIONS][3] == [
        "2",
        "70.0 ± 5.0",
        "60.0 ± 5.0",
        "61.0 ± 5.0",
        "25.0",
        "75.0 ± 5.0",
        "8",
        "6",
        "2,100",
        "28",
        "7",
    ]
    assert md[DIVERSITY][0] == ["iter", "answer agreement", "consensus", "cross NLL", "self NLL", "KL"]  # no embeddings
    assert md[DIVERSITY][3] == ["2", "0.6000", "0.4000", "2.0000", "1.0000", "0.7500"]
    assert md[LIKELIHOODS][0] == [
        "iter",
        "critic round",
        "critic cross NLL",
        "critic self NLL",
        "critic KL",
        "KL from base",
        "gen_0",
        "gen_1",
        "critic_0",
        "critic_1",
    ]
    assert md[LIKELIHOODS][1] == [
        "0",
        "2",
        "1.2500",
        "0.7500",
        "0.5000",
        "0.0000",
        "0.0000",
        "0.0000",
        "0.0000",
        "0.0000",
    ]
    assert md[LIKELIHOODS][3] == [
        "2",
        "2",
        "1.5000",
        "0.7500",
        "0.6250",
        "0.0350",
        "0.0200",
        "0.0400",
        "0.0300",
        "0.0500",
    ]
    assert md["Stage times (seconds)"][-1] == ["total", "4.2"]


def test_comparison_console_and_report_show_the_same_numbers(tmp_path):
    root = tmp_path / "cmp"
    results, _ = make_comparison(root, paper=True)
    md = dict(markdown_grids(comparison_markdown(results, RunStore.saved_config(root / "maft"))).tables)
    page = dict(Grids(write_report(root).read_text()).tables)
    assert list(md) == list(page) == [METHODS_TABLE, "Accuracy % ± SE per iteration", DIVERSITY, LIKELIHOODS]
    assert [row[:-1] for row in page[METHODS_TABLE]] == md[METHODS_TABLE]  # the report adds the descriptions
    assert [row[-1] for row in page[METHODS_TABLE]] == ["description", *(r.description for r in results)]
    assert all(page[title] == md[title] for title in list(page)[1:])
    assert rich_grid(comparison_table(results)) == md[METHODS_TABLE]
    assert md[METHODS_TABLE][1] == [
        "maft",
        "52.0 ± 5.0",
        "72.0 ± 5.0 (iter 2)",
        "72.0 ± 5.0 (iter 2)",
        "3,300",
        "42",
        "90",
        "majority",
    ]
    assert md[METHODS_TABLE][4] == ["single", "45.0 ± 5.0", "45.0 ± 5.0", "-", "100", "0", "20", "-"]
    assert [row[:2] for row in md[LIKELIHOODS]] == [
        ["method", "iter"],
        ["maft", "0"],
        ["maft", "1"],
        ["maft", "2"],
        ["debate", "0"],
    ]


def test_the_best_iteration_is_the_earliest_highest_and_said_to_be_descriptive(tmp_path):
    root = tmp_path / "cmp"
    results, _ = make_comparison(root)
    maft = results[0].model_copy(
        update={
            "accuracy": [acc(0.5), acc(0.75), acc(0.6), acc(0.75)],
            "compute": results[0].compute + [results[0].compute[-1]],
        }
    )
    text = comparison_markdown([maft], RunStore.saved_config(root / "maft"))
    assert dict(markdown_grids(text).tables)[METHODS_TABLE][1][2:4] == ["75.0 ± 5.0 (iter 3)", "75.0 ± 5.0 (iter 1)"]
    assert "best %\\*" in text and "\\*Best: the iteration with the highest held-out accuracy" in text
    assert "picked on the same held-out problems it reports" in comparison_table([maft]).caption.plain


def test_without_diversity_or_paper_likelihoods_nothing_empty_is_shown(tmp_path):
    metrics, _ = make_run(tmp_path / "plain")
    text = summary_markdown(RunStore.saved_config(tmp_path / "plain"), metrics, {"config_hash": "x", "stages": {}})
    assert DIVERSITY in text and LIKELIHOODS not in text and "critic KL" not in text and "KL from base" not in text
    assert "embedding" not in text  # not measured: no column
    metrics, _ = make_run(tmp_path / "none", diversity=False)
    text = summary_markdown(RunStore.saved_config(tmp_path / "none"), metrics, {"config_hash": "x", "stages": {}})
    assert "No diversity measures were recorded." in text and "answer agreement" not in text


def test_the_report_assets_are_package_data(tmp_path):
    from fnmatch import fnmatch
    from importlib.resources import files

    tomllib = pytest.importorskip("tomllib")
    assets = files("maft.report") / "assets"
    names = sorted(p.name for p in assets.iterdir() if p.is_file())
    assert names == ["report.css", "report.js"]
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["maft"]
    assert all(any(fnmatch(f"report/assets/{name}", p) for p in patterns) for name in names)  # in the wheel
    make_run(tmp_path / "run")
    page = write_report(tmp_path / "run").read_text()
    assert f"<style>\n{asset('report.css')}</style>" in page and "table.metrics .l { text-align: left; }" in page
    assert f"const SHOWN = 200;\n{asset('report.js')}</script>" in page and "window.MAFT_TRANSCRIPTS" in asset(
        "report.js"
    )


# -- the page in headless Chromium ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def driver():
    required = os.environ.get("MAFT_REQUIRE_BROWSER") == "1"
    if webdriver is None or not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        (pytest.fail if required else pytest.skip)(BROWSER_MISSING)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,2000"):
        options.add_argument(arg)
    browser = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield browser
    browser.quit()


def shown(driver) -> list[str]:
    """The head line of each rendered turn."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#transcripts .turn .head')].map(e => e.textContent)"
    )


def set_filter(driver, id: str, value: str) -> None:
    element = driver.find_element(By.ID, id)
    if element.tag_name == "select":
        Select(element).select_by_value(value)
    else:
        element.clear()
        element.send_keys(value)


def check_page(driver, index: Path, tables: dict[str, int], total: int) -> None:
    driver.get(index.as_uri())
    for id, rows in tables.items():
        assert len(driver.find_elements(By.CSS_SELECTOR, f"table.metrics#{id} tbody tr")) == rows, id
    images = driver.execute_script(
        "return [...document.images].map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])"
    )
    assert images and all(complete and width > 0 for _, complete, width in images), images
    assert driver.execute_script("return window.MAFT_TRANSCRIPTS.length") == total
    more = ", showing first 200" if total > 200 else ""
    assert driver.find_element(By.ID, "t-count").text == f"{total} of {total} turns{more}"
    assert len(shown(driver)) == min(total, 200)
    assert driver.execute_script("return document.querySelectorAll('#transcripts b').length") == 0
    ends_with_nasty = f"p => p.textContent.endsWith({json.dumps(NASTY)})"
    assert driver.execute_script(f"return [...document.querySelectorAll('#transcripts pre')].some({ends_with_nasty})")


def test_run_page_in_browser(tmp_path, driver):
    run = tmp_path / "run"
    metrics, turns = make_run(run, problems=20)  # 3 iterations x 20 problems x 2 agents x 2 rounds = 240 turns
    index = write_report(run)
    check_page(driver, index, {"iterations": 3, "diversity-table": 3, "agents": 6}, len(turns))
    assert not driver.find_element(By.ID, "f-method").is_displayed()

    set_filter(driver, "f-round", "2")
    round2 = [t for t in turns if t.round == 2]
    assert len(shown(driver)) == len(round2) == 120
    set_filter(driver, "f-correct", "wrong")
    wrong = [t for t in round2 if not t.correct]
    assert len(shown(driver)) == len(wrong) and 0 < len(wrong) < len(round2)
    assert driver.find_element(By.ID, "t-count").text == f"{len(wrong)} of {len(turns)} turns"
    set_filter(driver, "f-iteration", "1")
    set_filter(driver, "f-agent", "0")
    expected = [t for t in make_turns(1, 20, 2, 2) if t.round == 2 and not t.correct and t.agent == 0]
    assert len(shown(driver)) == len(expected) > 0
    set_filter(driver, "f-correct", "")
    set_filter(driver, "f-problem", "p07")
    heads = shown(driver)
    assert len(heads) == 1 and "problem p07" in heads[0] and "round 2" in heads[0]

    driver.set_window_size(1280, 2400)
    screenshot = tmp_path / "report.png"
    assert driver.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == PNG


def test_comparison_page_in_browser(tmp_path, driver):
    root = tmp_path / "cmp"
    _, turns = make_comparison(root)
    index = write_report(root)
    total = sum(len(t) for t in turns.values())
    check_page(driver, index, {"comparison": 4, "accuracy-table": 4, "diversity-table": 4}, total)
    assert driver.find_element(By.ID, "f-method").is_displayed()

    set_filter(driver, "f-method", "star")
    assert len(shown(driver)) == len(turns["star"])
    assert all(h.startswith("star") for h in shown(driver))
    set_filter(driver, "f-method", "")
    set_filter(driver, "f-problem", "p01")
    heads = shown(driver)
    assert len(heads) == sum(t.problem_id == "p01" for ts in turns.values() for t in ts)
    assert all("problem p01" in h for h in heads)
    set_filter(driver, "f-correct", "correct")
    assert len(shown(driver)) == sum(t.problem_id == "p01" and t.correct for ts in turns.values() for t in ts)
