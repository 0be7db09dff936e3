// Sending many prepared images: split them into requests that respect the server's limits (files,
// bytes and, where the server has one, decoded pixels per request), and when the server names one
// bad file ("queries[2]: ..."), mark that file and send the others again.

import { ApiError, plainWords } from "./api.js";
import { byteBudget, TooLarge } from "./images.js";
import { plural } from "./dom.js";

function cost(items) {
  let bytes = 0;
  let pixels = 0;
  for (const item of items) {
    bytes += item.prepared.blob.size;
    pixels += item.prepared.pixels ?? 0;
  }
  return { files: items.length, bytes, pixels };
}

/**
 * Split `items` (each with `.prepared` from images.prepare) into batches for one request each,
 * after `reserved` items that every request carries too (the support images of an inline few-shot
 * call). Throws TooLarge with a sentence when even one item does not fit beside the reserved ones.
 */
export function batches(items, limits, reserved = []) {
  const fixed = cost(reserved);
  const room = {
    files: limits.max_files - fixed.files,
    bytes: byteBudget(limits) - fixed.bytes,
    pixels: (limits.max_request_pixels ?? Infinity) - fixed.pixels,
  };
  if (reserved.length && (room.files < 1 || room.bytes <= 0 || room.pixels <= 0)) {
    throw new TooLarge(
      `The classes hold ${plural(reserved.length, "image")}: with a query that is more than the server ` +
        `takes in one request (${limits.max_files} files, ${Math.floor(byteBudget(limits) / 1048576)} MB). ` +
        "Save them as a support set: then the server keeps them and queries are sent alone.",
    );
  }
  const out = [];
  let current = [];
  let used = { files: 0, bytes: 0, pixels: 0 };
  for (const item of items) {
    const one = cost([item]);
    if (one.bytes > room.bytes || one.pixels > room.pixels) {
      throw new TooLarge(`${item.prepared.name} does not fit in one request beside the support images.`);
    }
    const fits =
      used.files + 1 <= room.files &&
      used.bytes + one.bytes <= room.bytes &&
      used.pixels + one.pixels <= room.pixels;
    if (!fits && current.length) {
      out.push(current);
      current = [];
      used = { files: 0, bytes: 0, pixels: 0 };
    }
    current.push(item);
    used = { files: used.files + 1, bytes: used.bytes + one.bytes, pixels: used.pixels + one.pixels };
  }
  if (current.length) out.push(current);
  return out;
}

/**
 * Call `send(groups)` (groups: {field name: items}, e.g. {support: [...], queries: [...]}) until it
 * succeeds. When the server names one file of a group, `onFileError(item, error)` is told and the
 * request is made again without it. Resolves to {result, groups} (the groups really sent), or
 * null when a group ran out of files. Any other error is thrown for the caller to show.
 */
export async function sendDroppingBadFiles(groups, send, onFileError) {
  let current = groups;
  for (;;) {
    try {
      return { result: await send(current), groups: current };
    } catch (error) {
      const list = error instanceof ApiError && error.field ? current[error.field] : null;
      const bad = list?.[error.index];
      if (!bad) throw error;
      onFileError(bad, error);
      current = { ...current, [error.field]: list.filter((item) => item !== bad) };
      if (Object.values(current).some((items) => items.length === 0)) return null;
    }
  }
}

/**
 * Send `items` under `field` in batches and give each its row of the answer (`item.result`). With
 * `support` (items), every request carries them too, and a support image the server refuses is
 * left out of the following requests. `stale()` says the page has moved on (stop quietly).
 * Resolves to "" when done, or the plain words of the error that stopped it.
 */
export async function sendInBatches({
  items,
  field,
  limits,
  support = null,
  send,
  onFileError,
  stale,
  render,
}) {
  let reserved = support ?? [];
  try {
    for (const batch of batches(items, limits, reserved)) {
      const groups = support ? { support: reserved, [field]: batch } : { [field]: batch };
      const sent = await sendDroppingBadFiles(groups, send, onFileError);
      if (stale()) return "";
      if (sent) {
        sent.groups[field].forEach((item, i) => (item.result = sent.result.results[i]));
        reserved = sent.groups.support ?? reserved;
      }
      render();
    }
    return "";
  } catch (error) {
    const words = plainWords(error);
    return `${words.text} ${words.detail}`.trim();
  }
}
