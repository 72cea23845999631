// maft report: the transcript browser of index.html (inlined into the page after `const SHOWN = <n>;`).
// It reads window.MAFT_TRANSCRIPTS and window.MAFT_QUESTIONS from transcripts.js and renders the turns the
// filters select, at most SHOWN at a time, as text (never as markup).
(function () {
  const data = window.MAFT_TRANSCRIPTS || [], questions = window.MAFT_QUESTIONS || {};
  const $ = (id) => document.getElementById(id);
  const keys = { method: "f-method", iteration: "f-iteration", agent: "f-agent", round: "f-round" };
  for (const [key, id] of Object.entries(keys)) {
    const values = [...new Set(data.map((t) => t[key]))];
    if (key !== "method") values.sort((a, b) => a - b);
    for (const v of values) {
      const option = document.createElement("option");
      option.value = option.textContent = String(v);
      $(id).appendChild(option);
    }
  }
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function details(summary, text) {
    const d = el("details");
    d.appendChild(el("summary", "", summary));
    d.appendChild(el("pre", "", text));
    return d;
  }
  function render() {
    const want = {};
    for (const [key, id] of Object.entries(keys)) want[key] = $(id).value;
    const problem = $("f-problem").value.trim(), correct = $("f-correct").value;
    const matches = data.filter((t) =>
      Object.keys(want).every((k) => want[k] === "" || String(t[k]) === want[k]) &&
      (problem === "" || t.problem_id.includes(problem)) &&
      (correct === "" || t.correct === (correct === "correct")));
    $("t-count").textContent = `${matches.length} of ${data.length} turns` +
      (matches.length > SHOWN ? `, showing first ${SHOWN}` : "");
    const box = $("transcripts");
    box.replaceChildren();
    for (const t of matches.slice(0, SHOWN)) {
      const turn = el("div", "turn"), head = el("div", "head");
      if (t.method) { head.appendChild(el("span", "tag", t.method)); head.append(" "); }
      head.append(`iteration ${t.iteration} · problem ${t.problem_id} · agent ${t.agent} · round ${t.round} · answer `);
      head.appendChild(el("span", t.correct ? "badge ok" : "badge bad",
        (t.correct ? "✓ " : "✗ ") + (t.answer === null ? "(no answer)" : t.answer)));
      turn.appendChild(head);
      turn.appendChild(details("question", questions[t.problem_id] || ""));
      if (t.critic !== undefined) turn.appendChild(details("what the critic saw", t.critic));
      turn.appendChild(el("pre", "response", t.response));
      box.appendChild(turn);
    }
  }
  for (const id of [...Object.values(keys), "f-correct"]) $(id).addEventListener("change", render);
  $("f-problem").addEventListener("input", render);
  render();
})();
