// Thumbnails of saved support sets, kept in this browser (localStorage) so that a reopened set shows
// its pictures: the server stores embeddings and labels, not images. Small JPEGs, a few per class;
// when storage is full or switched off the set simply opens without them.

import { thumbnail } from "./images.js";

const PREFIX = "clce.thumbs.";
const PER_CLASS = 12;

/** {label: [data URL, ...]} for the set, empty when this browser kept none. */
export function loadThumbs(setId) {
  try {
    return JSON.parse(localStorage.getItem(PREFIX + setId) ?? "{}");
  } catch {
    return {};
  }
}

/** Add thumbnails of `items` (each with `.file` and `.label`) to the set's, up to PER_CLASS a class. */
export async function rememberThumbs(setId, items) {
  const kept = loadThumbs(setId);
  for (const item of items) {
    const list = (kept[item.label] ??= []);
    if (list.length >= PER_CLASS) continue;
    const url = await thumbnail(item.file);
    if (url) list.push(url);
  }
  try {
    localStorage.setItem(PREFIX + setId, JSON.stringify(kept));
  } catch {
    /* full or switched off: the set opens without pictures */
  }
}

export function forgetThumbs(setId) {
  try {
    localStorage.removeItem(PREFIX + setId);
  } catch {
    /* nothing kept */
  }
}
