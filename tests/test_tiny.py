import json
import random

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from maft.engines import Request, Sampling
from maft.tasks.arithmetic import Expression, arithmetic_prompt
from maft.tiny import default_checkpoint
from maft.tiny.synth import SimulatedDebate, SynthConfig, solve


def test_recipe_saves_a_loadable_chat_model(recipe_checkpoint):
    model = AutoModelForCausalLM.from_pretrained(recipe_checkpoint)
    tok = AutoTokenizer.from_pretrained(recipe_checkpoint)
    assert isinstance(model, LlamaForCausalLM)
    assert (recipe_checkpoint / "model.safetensors").is_file()
    recipe = json.loads((recipe_checkpoint / "maft_recipe.json").read_text())
    assert recipe["recipe"]["steps"] == 6 and recipe["stats"]["params"] == model.num_parameters()
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert text == "<|bos|><|user|>\nhi<|end|>\n<|assistant|>\n"
    # digits are one token each, whatever the number
    pieces = tok.convert_ids_to_tokens(tok("12345+678", add_special_tokens=False)["input_ids"])
    assert [p for p in pieces if p.strip("Ġ").isdigit()] == list("12345678")
    assert tok.decode(tok("x=-569, \\boxed{7}")["input_ids"]) == "x=-569, \\boxed{7}"


def test_solution_formats():
    expr = Expression(27, 16, 8, 1, 25, 29)  # 156 - 725 < 0
    head = "16*8=128, 25*29=725, 27+128=155, 155+1=156, "
    forms = {
        "places": "156-725=-(725-156): 725-100=625, 625-50=575, 575-6=569",
        "flip": "156-725=-(725-156)=-569",
        "direct": "156-725=-569",
    }
    for form, last in forms.items():
        text, answer = solve(expr, random.Random(0), slip_rate=0.0, subtraction=form)
        assert text == head + last + ". The answer is \\boxed{-569}." and answer == expr.value
    text, answer = solve(Expression(27, 16, 8, 1, 5, 9), random.Random(0), slip_rate=0.0)
    assert text.endswith("156-45: 156-40=116, 116-5=111. The answer is \\boxed{111}.") and answer == 111
    text, _ = solve(Expression(0, 0, 0, 0, 20, 20), random.Random(0), slip_rate=0.0)  # one place: one step
    assert text.endswith("0-400=-(400-0)=-400. The answer is \\boxed{-400}.")


@pytest.mark.parametrize("form", ["places", "flip", "direct"])
def test_slips_are_diverse_and_propagate(form):
    expr = Expression(27, 16, 8, 1, 25, 29)
    rng = random.Random(1)
    answers = [solve(expr, rng, slip_rate=1.0, subtraction=form)[1] for _ in range(200)]
    assert sum(a != expr.value for a in answers) > 180  # slips can cancel by chance, rarely
    assert len(set(answers)) > 20  # slips are diverse: wrong answers rarely agree
    for _ in range(100):  # whatever slipped, later steps use the values written before them
        text, answer = solve(Expression.sample(rng), rng, slip_rate=0.5, subtraction=form)
        assert text.endswith(f"\\boxed{{{answer}}}.")
        mul1, mul2, add1, add2, sub = text.split(". The answer")[0].split(", ", 4)
        p1, p2 = int(mul1.split("=")[1]), int(mul2.split("=")[1])
        assert int(add1.split("=")[0].split("+")[1]) == p1
        s1 = int(add1.split("=")[1])
        assert int(add2.split("+")[0]) == s1
        s2 = int(add2.split("=")[1])
        assert sub.startswith(f"{s2}-{p2}")
        pieces = sub.split(": ")[1].split(", ") if ": " in sub else []
        for before, after in zip(pieces, pieces[1:]):
            assert after.split("-")[0] == before.split("=")[1]
        last = int((pieces[-1] if pieces else sub).split("=")[-1])
        assert answer == (-abs(last) if "(" in sub else last)


def test_round1_slip_rate_matches_config():
    rng = random.Random(0)
    expr = Expression(3, 4, 5, 6, 7, 8)
    wrong = sum(solve(expr, rng, 0.1)[1] != expr.value for _ in range(4000)) / 4000
    assert abs(wrong - (1 - 0.9**5)) < 0.03


def test_critic_confirms_when_all_agree_and_rechecks_otherwise():
    expr = Expression(1, 2, 3, 4, 5, 6)
    society = SimulatedDebate(SynthConfig(slip_rate=0.0, critic_slip_rate=1.0), random.Random(0))
    convs = society.debate(expr, n_agents=3, rounds=2, concat=False)
    for conv in convs:  # round 1 all correct, so every critic confirms in one sentence, without a slip
        assert conv[3]["content"] == f"My answer agrees with the others. The answer is \\boxed{{{expr.value}}}."
        assert f"The other agents' answers are: {expr.value}, {expr.value}." in conv[2]["content"]
    copying = SimulatedDebate(SynthConfig(slip_rate=0.0, critic_confirm="copy"), random.Random(0))
    for conv in copying.debate(expr, n_agents=3, rounds=2, concat=False):  # the first checkpoints' recipe
        assert conv[3]["content"] == conv[1]["content"]
    society = SimulatedDebate(SynthConfig(slip_rate=1.0, critic_slip_rate=0.0), random.Random(0))
    convs = society.debate(expr, n_agents=3, rounds=2, concat=True)
    for conv in convs:  # round 1 wrong and disagreeing: critics recompute (cleanly here)
        assert conv[3]["content"].endswith(f"\\boxed{{{expr.value}}}.") and "One agent solution:" in conv[2]["content"]
        assert conv[0]["content"] == arithmetic_prompt(expr.text)


@pytest.mark.parametrize(
    ("rule", "answers", "backed"),
    [
        ("minority", [5, 5, 7], [True, True, False]),  # the two who agree stand; the odd one rechecks
        ("minority", [5, 6, 7], [False, False, False]),  # nobody is backed
        ("minority", [5, 5, 7, 7], [True, True, True, True]),  # a tie of most common answers: both stand
        ("minority", [5, 5, 5, 7, 7], [True, True, True, False, False]),
        ("disagreement", [5, 5, 7], [False, False, False]),  # any disagreement: everyone rechecks
        ("disagreement", [5, 5, 5], [True, True, True]),
    ],
)
def test_which_critics_recheck(rule, answers, backed):
    society = SimulatedDebate(SynthConfig(critic_recheck=rule), random.Random(0))
    assert [society._backed(answers, n) for n in range(len(answers))] == backed


def test_backed_critics_keep_a_good_society_right():
    """The data-generating society with good agents (slip 0.05, as after finetuning): rechecking only the
    minority keeps the round-2 majority at least at round 1's; rechecking on any disagreement (the first
    recipe) lowered it, since two agreeing agents recomputed and slipped."""
    from maft.debate.voting import majority_vote

    def majorities(rule: str) -> tuple[float, float]:
        society = SimulatedDebate(SynthConfig(slip_rate=0.05, critic_recheck=rule), random.Random(0))
        first = second = 0
        for _ in range(600):
            expr = Expression.sample(society.rng)
            convs = society.debate(expr, n_agents=3, rounds=2, concat=False)
            answers = [[int(c[i]["content"].split("{")[-1].rstrip("}.")) for c in convs] for i in (1, 3)]
            first += majority_vote(answers[0], lambda x, y: x == y).answer == expr.value
            second += majority_vote(answers[1], lambda x, y: x == y).answer == expr.value
        return first / 600, second / 600

    one, two = majorities("minority")
    assert two >= one
    one, two = majorities("disagreement")
    assert two < one - 0.1


def test_synthetic_society_rewards_majority_and_debate():
    """The data the model imitates: a majority of 3 beats one agent, and round 2 beats round 1."""
    from maft.debate.voting import majority_vote

    society = SimulatedDebate(SynthConfig(), random.Random(0))
    single = majority = round2 = 0
    n = 1500
    for _ in range(n):
        expr = Expression.sample(society.rng)
        convs = society.debate(expr, n_agents=3, rounds=2, concat=False)
        first = [int(c[1]["content"].split("{")[-1].rstrip("}.")) for c in convs]
        second = [int(c[3]["content"].split("{")[-1].rstrip("}.")) for c in convs]
        single += sum(a == expr.value for a in first) / 3
        majority += majority_vote(first, lambda x, y: x == y).answer == expr.value
        round2 += sum(a == expr.value for a in second) / 3
    single, majority, round2 = single / n, majority / n, round2 / n
    assert abs(single - 0.8**5) < 0.03
    assert majority > single + 0.05
    assert round2 > single + 0.05


def test_mix_needs_a_quarter_debates():
    with pytest.raises(ValueError, match="at least 25%"):
        SynthConfig(mix={"round1": 0.8, "debate": 0.2})
    with pytest.raises(ValueError, match="unknown conversation kinds"):
        SynthConfig(mix={"round1": 0.5, "debates": 0.5})


@pytest.mark.slow
def test_shipped_checkpoint_answers_in_format(engine, arithmetic):
    assert engine.model_name == str(default_checkpoint())
    problems = arithmetic.splits(0, 40, seed=7).test
    greedy = Sampling(temperature=0, max_new_tokens=160)
    gens = engine.generate(
        [Request([{"role": "user", "content": arithmetic.prompt(p)}], sampling=greedy) for p in problems]
    )
    answers = [arithmetic.extract(g.text) for g in gens]
    assert all(g.text.endswith("}.") and "\\boxed{" in g.text for g in gens)
    assert all(a is not None for a in answers)


@pytest.mark.slow
def test_shipped_checkpoint_behaves_like_a_sampled_llm(engine, arithmetic):
    """Correct when greedy, diverse slips when sampled: a majority of 3 and a debate round both help
    (the shipped checkpoint's numbers on 300 problems are in the README)."""
    from maft.tiny.check import check

    result = check(engine, arithmetic, arithmetic.splits(0, 100, seed=7).test)
    assert result.greedy.mean >= 0.85
    assert 0.30 <= result.single.mean <= 0.75
    assert result.majority_of_3.mean >= result.single.mean + 0.05
    assert result.debate_round2_agent.mean >= result.single.mean + 0.05


def test_cli_tiny_train_with_config_file(tmp_path):
    from typer.testing import CliRunner

    from maft.cli import app

    cfg = tmp_path / "recipe.yaml"
    cfg.write_text(
        "steps: 2\nseed: 3\nbatch_size: 2\ntokenizer_corpus: 200\nwarmup_steps: 1\nsynth: {subtraction: direct}\n"
        "model: {hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 32}\n"
    )
    res = CliRunner().invoke(app, ["tiny", "train", "--out", str(tmp_path / "m"), "--config", str(cfg), "--lr", "0.01"])
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "m" / "maft_recipe.json").read_text())["recipe"]
    assert saved["steps"] == 2 and saved["seed"] == 3 and saved["lr"] == 0.01  # the file's values, the flag's lr
    assert saved["model"]["hidden_size"] == 16 and saved["synth"]["subtraction"] == "direct"
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "m").config.num_hidden_layers == 1


def test_recipe_continues_from_a_checkpoint(recipe_checkpoint, tmp_path):
    from maft.tiny.recipe import RecipeConfig, pretrain

    out = pretrain(
        RecipeConfig(steps=2, batch_size=2, warmup_steps=1, init_from=str(recipe_checkpoint)),
        tmp_path / "c",
        progress=False,
    )
    before = AutoModelForCausalLM.from_pretrained(recipe_checkpoint)
    after = AutoModelForCausalLM.from_pretrained(out)
    assert after.config.hidden_size == before.config.hidden_size == 32  # the shape came from the checkpoint
    assert (
        AutoTokenizer.from_pretrained(out).get_vocab() == AutoTokenizer.from_pretrained(recipe_checkpoint).get_vocab()
    )
    assert any((a != b).any() for a, b in zip(after.parameters(), before.parameters()))  # and it trained
    stats = json.loads((out / "maft_recipe.json").read_text())["stats"]
    assert stats["continued_from"]["recipe"]["steps"] == 6
