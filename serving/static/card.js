// The model card summary (GET /info): what model this is, its classes, input, precision, training
// metrics; the server's limits and runtime behind "Details".

import { fill, formatBytes, formatPixels, h, plural } from "./dom.js";

const METRIC_NAMES = {
  val_top1: "val top-1",
  test_top1: "test top-1",
  val_top5: "val top-5",
  test_top5: "test top-5",
};

function fact(name, value) {
  return value === null || value === undefined || value === ""
    ? null
    : h("div", { class: "fact" }, h("dt", {}, name), h("dd", {}, value));
}

function metrics(card) {
  const m = card.metrics ?? {};
  const shown = Object.keys(METRIC_NAMES).filter((k) => typeof m[k] === "number");
  return shown.map((k) => `${METRIC_NAMES[k]} ${m[k].toFixed(1)}%`).join(" · ");
}

function loss(card) {
  const l = card.loss;
  if (!l?.name) return null;
  const parts = [l.name.toUpperCase()];
  if (typeof l.lam === "number") parts.push(`λ ${l.lam}`);
  if (typeof l.tau === "number") parts.push(`τ ${l.tau}`);
  return parts.join(" ");
}

export function renderCard(el, card) {
  const [, height, width] = card.input_size;
  const limits = card.limits;
  const classes =
    card.labels.length <= 12
      ? card.labels.join(", ")
      : `${card.labels.slice(0, 12).join(", ")}, … (${card.labels.length - 12} more)`;
  fill(
    el,
    h(
      "dl",
      { class: "facts" },
      fact("Model", h("code", {}, card.model_name)),
      fact("Classes", `${card.num_classes}: ${classes}`),
      fact("Input", `${width}×${height} px, ${card.interpolation}`),
      fact("Precision", card.precision),
      fact("Trained with", loss(card)),
      fact("Metrics", metrics(card)),
    ),
    h(
      "details",
      { class: "more" },
      h("summary", {}, "Details"),
      h(
        "dl",
        { class: "facts" },
        fact("Model id", h("code", { title: card.model }, card.model.slice(0, 16))),
        fact("Embedding", `${card.embedding_dim} dimensions`),
        fact("Runs on", `${card.device} (${card.providers.join(", ")})`),
        fact("Per request", `${plural(limits.max_files, "file")}, ${formatBytes(limits.max_upload_bytes)}`),
        fact("Per image", formatPixels(limits.max_image_pixels)),
        limits.max_request_pixels
          ? fact("Pixels per request", formatPixels(limits.max_request_pixels))
          : null,
        fact("Exported", card.created),
      ),
    ),
  );
}
