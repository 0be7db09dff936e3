// Teach by example, step 2: query images labelled by the support classes (POST /fewshot), each with
// its cosine similarity to every class prototype as bars. The threshold slider relabels queries as
// "unknown" in the page, from the scores it already has: no request is made when it moves.

import { formData, request } from "./api.js";
import { classColour, dropZoneElement, fill, h, plural } from "./dom.js";
import { bars, newItem, prepareAll, resultCard, setError, verdict } from "./items.js";
import { sendInBatches } from "./upload.js";

const RERUN_DELAY_MS = 250;

/**
 * `source()` says what the queries are compared with: {setId} for a stored set, or {support: items}
 * (each item with .prepared and .label) for classes only in the page. `onSupportError()` is told when
 * the server rejected one of those support images (it is marked on the item).
 */
export function initQueries(root, info, { source, onSupportError }) {
  const queries = [];
  const list = root.querySelector("#query-results");
  const status = root.querySelector("#query-status");
  const openSet = root.querySelector("#openset");
  const slider = root.querySelector("#threshold");
  const output = root.querySelector("#threshold-value");
  let generation = 0;
  let timer = null; // a rerun of every query, waiting for the support to settle
  let running = 0; // runs in flight (a superseded one too, until its request returns)
  let rerunning = false; // the newest run labels every query

  root
    .querySelector("#query-drop")
    .replaceWith(
      Object.assign(
        dropZoneElement("Drop query images here, or choose files", add, { label: "Query images" }),
        { id: "query-drop" },
      ),
    );
  root.querySelector("#query-clear").addEventListener("click", () => {
    for (const q of queries) URL.revokeObjectURL(q.url);
    queries.length = 0;
    generation += 1;
    clearTimeout(timer);
    timer = null;
    rerunning = false;
    markBusy();
    status.textContent = "";
    render();
  });
  const relabel = () => {
    output.value = Number(slider.value).toFixed(2);
    slider.disabled = !openSet.checked;
    render();
  };
  slider.addEventListener("input", relabel);
  openSet.addEventListener("change", relabel);
  relabel();
  markBusy();

  /** New queries are labelled; if every query is due to be labelled again, that run takes them too. */
  function add(files) {
    const fresh = files.map(newItem);
    queries.unshift(...fresh);
    if (timer !== null || rerunning) rerunAll();
    else run(fresh);
  }

  /** The support changed: label every query again (after a short pause, so a burst is one run). */
  function supportChanged() {
    clearTimeout(timer);
    timer = setTimeout(rerunAll, RERUN_DELAY_MS);
    markBusy();
  }

  function rerunAll() {
    clearTimeout(timer);
    timer = null;
    run(queries.filter((q) => !q.error), true);
  }

  /** aria-busy on the results while labels may still change: a rerun waiting, or a run in flight. */
  function markBusy() {
    list.setAttribute("aria-busy", String(timer !== null || running > 0));
  }

  /** Label `targets` with the current support; `all`: they are every query. */
  async function run(targets, all = false) {
    const gen = ++generation;
    rerunning = all;
    running += 1;
    markBusy();
    try {
      await label(targets, gen);
    } finally {
      running -= 1;
      if (gen === generation) rerunning = false;
      markBusy();
    }
  }

  async function label(targets, gen) {
    const src = source();
    if (!src.setId && !src.support.length) {
      status.textContent = targets.length
        ? "Add a class with at least one image: then the queries are labelled."
        : "";
      render();
      return;
    }
    status.textContent = targets.length ? `Labelling ${plural(targets.length, "query", "queries")}…` : "";
    render();
    await prepareAll([...targets, ...(src.support ?? [])], info.limits);
    const message = await sendInBatches({
      items: targets.filter((q) => !q.error),
      field: "queries",
      limits: info.limits,
      support: src.setId ? null : src.support.filter((item) => !item.error),
      send: (groups) => request("fewshot", { method: "POST", body: body(src, groups) }),
      onFileError: (item, error) => {
        setError(item, error);
        if (item.label !== undefined) onSupportError();
      },
      stale: () => gen !== generation,
      render,
    });
    if (gen !== generation) return;
    status.textContent = message;
    render();
  }

  function body(src, groups) {
    const fields = { queries: groups.queries.map((q) => q.prepared) };
    if (src.setId) fields.support_set_id = src.setId;
    else {
      fields.support = groups.support.map((item) => item.prepared);
      fields.support_labels = groups.support.map((item) => item.label);
    }
    return formData(fields);
  }

  function render() {
    fill(list, queries.map(card));
  }

  function card(q) {
    return resultCard(q, () => scored(q), "result query");
  }

  /** The verdict from the scores and the slider, then one bar per class, best first. */
  function scored(q) {
    const rows = Object.entries(q.result.scores)
      .sort((a, b) => b[1] - a[1])
      .map(([name, score], i) => ({
        name,
        value: score,
        fraction: score,
        colour: classColour(name),
        text: score.toFixed(2),
        best: i === 0,
      }));
    if (!rows.length) return null;
    const threshold = openSet.checked ? Number(slider.value) : null;
    const best = rows[0];
    const rejected = threshold === null ? q.result.rejected === true : best.value < threshold;
    const why =
      threshold === null ? "" : `best similarity ${best.value.toFixed(3)} is below ${threshold.toFixed(2)}`;
    return [
      h(
        "p",
        { class: "verdict" },
        verdict(best.name, rejected, best.colour, why),
        rejected && why ? h("span", { class: "muted" }, why) : null,
      ),
      bars(rows, { marker: threshold, label: `cosine similarity of ${q.name} to each class` }),
    ];
  }

  return { supportChanged, render };
}
