// Images in the browser: make each file fit the server's advertised limits (GET /info "limits")
// before it is sent, and make small thumbnails.
//
// An image within the limits is sent as it is (so the answer equals the API's for that file). One
// with more pixels than `max_image_pixels` (or than `max_request_pixels`, the budget of a whole
// request, where the server has one), or more bytes than a request may carry, is drawn smaller on a
// canvas and sent as JPEG: upright (EXIF orientation applied) and on white, the server's own rule
// for transparency. A file the browser cannot decode is sent as it is and the server judges it.

import { formatBytes } from "./dom.js";

/** Bytes kept free in every request for the multipart headers and the form fields. */
const MULTIPART_MARGIN = 64 * 1024;
const PIXEL_MARGIN = 0.98; // stay clear of the limit after rounding the new width and height

export class TooLarge extends Error {}

/** Most bytes of files that one request may carry. */
export function byteBudget(limits) {
  return Math.max(0, limits.max_upload_bytes - MULTIPART_MARGIN);
}

/** Most pixels one image may have: the per-image limit, and the per-request one where there is one. */
function pixelCap(limits) {
  return Math.min(limits.max_image_pixels, limits.max_request_pixels ?? Infinity);
}

async function decode(file) {
  try {
    return await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch {
    return null; // not an image the browser knows (a text file, a TIFF, a broken file)
  }
}

function encode(bitmap, width, height, type = "image/jpeg", quality = 0.92) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff"; // transparency on white, as the server composites it
  ctx.fillRect(0, 0, width, height);
  ctx.drawImage(bitmap, 0, 0, width, height);
  return new Promise((resolve) => canvas.toBlob(resolve, type, quality));
}

/**
 * The file as it will be sent: {blob, name, pixels, resized, note}. `pixels` is null for a file the
 * browser cannot decode. Throws TooLarge (a sentence for people) when the file cannot be made to fit.
 */
export async function prepare(file, limits) {
  const budget = byteBudget(limits);
  const bitmap = await decode(file);
  if (!bitmap) {
    if (file.size > budget) {
      throw new TooLarge(
        `This file is ${formatBytes(file.size)}, more than the server takes in one request ` +
          `(${formatBytes(budget)}), and the browser cannot read it to make it smaller.`,
      );
    }
    return { blob: file, name: file.name, pixels: null, resized: false, note: "" };
  }
  try {
    const original = bitmap.width * bitmap.height;
    const cap = pixelCap(limits);
    if (original <= cap && file.size <= budget) {
      return { blob: file, name: file.name, pixels: original, resized: false, note: "" };
    }
    let scale = original > cap ? Math.sqrt((cap * PIXEL_MARGIN) / original) : 1;
    for (let tries = 0; tries < 12; tries += 1) {
      const width = Math.max(1, Math.floor(bitmap.width * scale));
      const height = Math.max(1, Math.floor(bitmap.height * scale));
      const blob = await encode(bitmap, width, height);
      if (blob && blob.size <= budget) {
        const note = `resized in the browser from ${bitmap.width}×${bitmap.height} to ${width}×${height} to fit the server's limits`;
        return { blob, name: file.name, pixels: width * height, resized: true, note };
      }
      scale *= 0.7;
    }
    throw new TooLarge("This image cannot be made small enough for the server's request limit.");
  } finally {
    bitmap.close();
  }
}

/**
 * A small JPEG data URL of the image (for saved sets), or null where the browser cannot decode it.
 * `size` is the longer side in pixels.
 */
export async function thumbnail(file, size = 96) {
  const bitmap = await decode(file);
  if (!bitmap) return null;
  try {
    const scale = Math.min(1, size / Math.max(bitmap.width, bitmap.height));
    const blob = await encode(
      bitmap,
      Math.max(1, Math.round(bitmap.width * scale)),
      Math.max(1, Math.round(bitmap.height * scale)),
      "image/jpeg",
      0.75,
    );
    return await new Promise((resolve) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => resolve(null);
      reader.readAsDataURL(blob);
    });
  } finally {
    bitmap.close();
  }
}
