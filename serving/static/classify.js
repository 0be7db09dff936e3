// The Classify panel: drop or pick images, see each one's top-k classes as probability bars (POST
// /classify). With the open-set option on, the request carries `threshold` and a result the server
// rejects (`rejected: true`) is shown as "unknown", never confused with a class named "unknown".

import { formData, request } from "./api.js";
import { classColour, dropZoneElement, fill, h, plural } from "./dom.js";
import { bars, newItem, prepareAll, resultCard, setError, verdict } from "./items.js";
import { sendInBatches } from "./upload.js";

export function initClassify(root, info) {
  const items = [];
  const status = root.querySelector("#classify-status");
  const list = root.querySelector("#classify-results");
  const topK = root.querySelector("#classify-topk");
  const openSet = root.querySelector("#classify-openset");
  const threshold = root.querySelector("#classify-threshold");
  let generation = 0;

  root
    .querySelector("#classify-drop")
    .replaceWith(
      Object.assign(
        dropZoneElement("Drop images here, or choose files", add, { label: "Images to classify" }),
        { id: "classify-drop" },
      ),
    );
  for (const control of [topK, openSet]) control.addEventListener("change", () => run(items));
  threshold.addEventListener("change", () => openSet.checked && run(items));
  root.querySelector("#classify-clear").addEventListener("click", () => {
    for (const item of items) URL.revokeObjectURL(item.url);
    items.length = 0;
    generation += 1;
    fill(list);
    status.textContent = "";
  });

  function add(files) {
    const fresh = files.map(newItem);
    items.unshift(...fresh);
    render();
    run(fresh);
  }

  async function run(targets) {
    const gen = ++generation;
    const todo = targets.filter((item) => !item.error || item.error.fromServer);
    for (const item of todo) {
      item.result = null;
      if (item.error?.fromServer) item.error = null;
    }
    status.textContent = todo.length ? `Classifying ${plural(todo.length, "image")}…` : "";
    render();
    await prepareAll(todo, info.limits);
    const query = { top_k: topK.value, threshold: openSet.checked ? threshold.value : null };
    const message = await sendInBatches({
      items: todo.filter((item) => !item.error),
      field: "images",
      limits: info.limits,
      send: (groups) =>
        request("classify", {
          method: "POST",
          query,
          body: formData({ images: groups.images.map((i) => i.prepared) }),
        }),
      onFileError: (item, error) => {
        setError(item, error);
        item.error.fromServer = true;
      },
      stale: () => gen !== generation,
      render,
    });
    if (gen !== generation) return;
    status.textContent = message;
    render();
  }

  function render() {
    fill(list, items.map(card));
  }

  function card(item) {
    return resultCard(item, (result) => [
      summary(result),
      bars(result.top_k.map(probabilityRow), { label: `top ${result.top_k.length} classes of ${item.name}` }),
    ]);
  }
}

function probabilityRow(entry, i) {
  return {
    name: entry.label,
    value: entry.probability,
    fraction: entry.probability,
    colour: classColour(entry.label),
    text: `${(100 * entry.probability).toFixed(1)}%`,
    best: i === 0,
  };
}

/** The top-1 line: the class, or "unknown" when the server rejected the image, with the similarity. */
function summary(result) {
  const top = result.top_k[0];
  const rejected = result.rejected === true;
  const similarity = typeof result.similarity === "number" ? result.similarity : null;
  let why = "";
  if (similarity !== null) {
    why = rejected
      ? `not like any training class: similarity ${similarity.toFixed(2)}`
      : `similarity to the training classes ${similarity.toFixed(2)}`;
  }
  const label = rejected ? "unknown" : (result.label ?? top?.label ?? "");
  return h(
    "p",
    { class: "verdict" },
    verdict(label, rejected, classColour(label), why),
    !rejected && top ? h("span", { class: "verdict-value" }, `${(100 * top.probability).toFixed(1)}%`) : null,
    why ? h("span", { class: "muted similarity" }, why) : null,
  );
}
