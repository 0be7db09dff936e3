// One picked file on the page: its thumbnail, the version that will be sent, and its error.

import { plainWords } from "./api.js";
import { h, uid } from "./dom.js";
import { prepare, TooLarge } from "./images.js";

/** {id, file, name, url, prepared, error, note}; `url` is a blob: URL for the thumbnail. */
export function newItem(file) {
  return {
    id: uid("img"),
    file,
    name: file.name,
    url: URL.createObjectURL(file),
    prepared: null,
    error: null,
    note: "",
  };
}

/** Prepare every item not prepared yet; an item that cannot be made to fit gets its error instead. */
export async function prepareAll(items, limits) {
  for (const item of items) {
    if (item.prepared || item.error) continue;
    try {
      item.prepared = await prepare(item.file, limits);
      item.note = item.prepared.note;
    } catch (error) {
      if (!(error instanceof TooLarge)) throw error;
      item.error = { text: error.message, detail: "" };
    }
  }
}

/** Record a server error on the item, in plain words. */
export function setError(item, error) {
  item.error = plainWords(error);
}

/** The thumbnail, or a tile with the file's extension when the browser cannot show the file. */
export function thumb(item, className = "thumb") {
  const ext = (item.name.split(".").pop() || "file").slice(0, 5).toUpperCase();
  const img = h("img", { class: className, src: item.url, alt: "", loading: "lazy" });
  img.addEventListener(
    "error",
    () => img.replaceWith(h("span", { class: `${className} no-preview`, "aria-hidden": "true" }, ext)),
    {
      once: true,
    },
  );
  return img;
}

/** The error line shown beside a file: the sentence, then the server's own words smaller. */
export function errorLine(error) {
  if (!error) return null;
  return h(
    "p",
    { class: "error", role: "alert" },
    h("strong", {}, error.text),
    error.detail ? h("span", { class: "detail" }, ` ${error.detail}`) : null,
  );
}

/** The bars of one result: rows of {name, value (the number), fraction (bar length, 0–1), colour, text, best}. */
export function bars(rows, { marker = null, label = "scores" } = {}) {
  return h(
    "ol",
    {
      class: "bars",
      "aria-label": label,
      vars: marker === null ? {} : { marker: String(Math.max(0, Math.min(1, marker))) },
    },
    rows.map((row) =>
      h(
        "li",
        { class: row.best ? "bar best" : "bar", dataset: { label: row.name, value: String(row.value) } },
        h("span", { class: "bar-name" }, row.name),
        h(
          "span",
          { class: marker === null ? "bar-track" : "bar-track with-marker", "aria-hidden": "true" },
          h("span", {
            class: "bar-fill",
            vars: { v: String(Math.max(0, Math.min(1, row.fraction))), c: row.colour },
          }),
        ),
        h("span", { class: "bar-value" }, row.text),
      ),
    ),
  );
}

/** The verdict chip: a class in its colour, or `unknown` (a rejection) drawn unlike any class. */
export function verdict(label, rejected, colour, why = "") {
  if (rejected) {
    return h(
      "span",
      { class: "label rejected", dataset: { rejected: "true" }, title: why || "no class is close enough" },
      h("span", { class: "rejected-mark", "aria-hidden": "true" }, "?"),
      "unknown",
    );
  }
  return h("span", { class: "label", dataset: { rejected: "false" }, vars: { c: colour } }, label);
}

/** A result card: thumbnail, file name, then `content()` once the item has its result. */
export function resultCard(item, content, className = "result") {
  const pending = !item.result && !item.error;
  return h(
    "li",
    { class: className, dataset: { file: item.name }, "aria-busy": pending ? "true" : null },
    thumb(item),
    h(
      "div",
      { class: "result-body" },
      h("p", { class: "file" }, item.name),
      item.result ? content(item.result) : null,
      pending ? h("p", { class: "muted" }, "waiting for the server…") : null,
      errorLine(item.error),
      item.note ? h("p", { class: "note" }, item.note) : null,
    ),
  );
}
