// Small DOM helpers shared by the page's panels: element building, drop zones, number formats.

/**
 * Build an element: h("li", {class: "x", dataset: {file: "a.png"}, onclick: f}, child, "text", ...).
 * Attributes whose value is null, undefined or false are left out; children may be arrays.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "dataset") Object.assign(el.dataset, value);
    else if (name === "vars") for (const [k, v] of Object.entries(value)) el.style.setProperty(`--${k}`, v);
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "text") el.textContent = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replace the children of `el` with `children`. */
export function fill(el, ...children) {
  el.replaceChildren();
  el.append(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

/**
 * Make `zone` (a <label> around a file <input>) accept dropped files as well as picked ones.
 * `onFiles` gets an array of File objects; the input is cleared so the same file can be picked again.
 */
function dropZone(zone, input, onFiles) {
  input.addEventListener("change", () => {
    const picked = [...input.files];
    input.value = "";
    if (picked.length) onFiles(picked);
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const dropped = [...(event.dataTransfer?.files ?? [])];
    if (dropped.length) onFiles(dropped);
  });
}

/** A drop zone element: a label with a visually hidden (still focusable) multiple-file input. */
export function dropZoneElement(text, onFiles, { small = false, label = text } = {}) {
  const input = h("input", {
    type: "file",
    multiple: true,
    accept: "image/*",
    class: "file-input",
    "aria-label": label,
  });
  const zone = h(
    "label",
    { class: small ? "drop small" : "drop" },
    input,
    h("span", { class: "drop-text" }, text),
  );
  dropZone(zone, input, onFiles);
  return zone;
}

export function formatBytes(n) {
  if (n >= 1024 * 1024) return `${(n / 1024 / 1024).toFixed(1)} MB`;
  if (n >= 1024) return `${Math.round(n / 1024)} KB`;
  return `${n} bytes`;
}

export function formatPixels(n) {
  return n >= 1e6 ? `${(n / 1e6).toFixed(1)} megapixels` : `${Math.round(n / 1000)} thousand pixels`;
}

/** "1 image" / "3 images"; "1 class" / "2 classes" with `many`. */
export function plural(n, word, many = `${word}s`) {
  return `${n} ${n === 1 ? word : many}`;
}

let counter = 0;
/** A page-unique id for list items. */
export function uid(prefix = "id") {
  counter += 1;
  return `${prefix}-${counter}`;
}

/** One colour per class, in the order classes are first seen (colour-blind-safe Okabe-Ito set). */
const PALETTE = ["#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#b8a200", "#555555"];
const colours = new Map();
export function classColour(name) {
  if (!colours.has(name)) colours.set(name, PALETTE[colours.size % PALETTE.length]);
  return colours.get(name);
}
