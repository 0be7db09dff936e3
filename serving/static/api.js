// Calls to the JSON API, and its errors in plain words.
//
// Every error of the server is {"error": {"code", "message"}} with a 4xx status. A 401 asks for the
// API key (once) and retries; a 429 waits for Retry-After and retries a few times. A message that
// starts with "field[index]: " (e.g. "support[3]: file 'a.txt' is not an image") names the file
// that caused it, so the page can show the error beside that file.

import { askKey, currentKey } from "./apikey.js";

const FILE_REFERENCE = /^(\w+)\[(\d+)\]: /;
const BUSY_RETRIES = 4;

export class ApiError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
    const ref = FILE_REFERENCE.exec(message);
    this.field = ref ? ref[1] : null; // "images", "support", "queries"
    this.index = ref ? Number(ref[2]) : null;
    this.detail = ref ? message.slice(ref[0].length) : message;
  }
}

const PLAIN = {
  network: "The server did not answer. Is it still running?",
  unauthorized: "The server needs a valid API key.",
  empty_file: "This file is empty.",
  invalid_image: "This image could not be read: the file may be truncated or damaged.",
  unsupported_media_type: "This is not an image the server can read. Use JPEG, PNG, WebP, BMP, GIF or TIFF.",
  image_too_large: "This image has more pixels than the server accepts.",
  request_too_large: "Too much data for one request to the server.",
  too_many_files: "Too many files for one request to the server.",
  queue_full: "The server is busy. Wait a moment and try again.",
  too_many_requests: "The server is busy. Wait a moment and try again.",
  not_ready: "The model is still loading. Try again in a few seconds.",
  support_set_not_found: "This support set is no longer on the server (it was deleted).",
  model_mismatch: "This support set was made with another model, so this server cannot use it.",
  labels_mismatch: "The classes and their images do not pair up.",
  not_found: "The server has no such page or endpoint.",
};

/** {text, detail}: a sentence for people, and the server's own message (already human) beside it. */
export function plainWords(error) {
  if (!(error instanceof ApiError)) return { text: String(error?.message ?? error), detail: "" };
  const text =
    PLAIN[error.code] ??
    (error.status === 422
      ? "The server did not accept the request."
      : `The server refused the request (HTTP ${error.status}).`);
  const detail = error.code === "network" ? "" : error.detail;
  return { text, detail };
}

async function toError(response) {
  let code = "error";
  let message = response.statusText || `HTTP ${response.status}`;
  try {
    const body = await response.json();
    if (body?.error?.code) ({ code, message } = body.error);
  } catch {
    /* not JSON: keep the status text */
  }
  const retry = Number(response.headers.get("Retry-After"));
  return new ApiError(response.status, code, message, Number.isFinite(retry) && retry > 0 ? retry : null);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Call the API. `path` is relative to the page ("info", "support-sets/ID"); `query` an object of
 * query parameters; `body` a FormData for multipart posts. Resolves to the parsed JSON.
 */
export async function request(path, { method = "GET", query = null, body = null } = {}) {
  const url = new URL(path, document.baseURI);
  for (const [name, value] of Object.entries(query ?? {})) {
    if (value !== null && value !== undefined) url.searchParams.set(name, String(value));
  }
  for (let attempt = 0; ; attempt += 1) {
    const key = currentKey();
    const headers = key ? { "X-API-Key": key } : {};
    let response;
    try {
      response = await fetch(url, { method, body, headers });
    } catch {
      throw new ApiError(0, "network", "could not reach the server");
    }
    if (response.ok) return response.json();
    const error = await toError(response);
    if (response.status === 401) {
      const reason = key
        ? "The server did not accept this key. Type the key it was started with (CLCE_API_KEY)."
        : "This server needs an API key (it was started with CLCE_API_KEY).";
      if (await askKey(reason)) continue;
      throw error;
    }
    if ((response.status === 429 || response.status === 503) && attempt < BUSY_RETRIES) {
      await sleep(1000 * (error.retryAfter ?? 2 ** attempt));
      continue;
    }
    throw error;
  }
}

/** A multipart body: files under `field` (in order) plus plain form fields (arrays repeat). */
export function formData(fields) {
  const form = new FormData();
  for (const [name, value] of Object.entries(fields)) {
    for (const item of Array.isArray(value) ? value : [value]) {
      if (item === null || item === undefined) continue;
      if (item.blob) form.append(name, item.blob, item.name);
      else form.append(name, String(item));
    }
  }
  return form;
}
