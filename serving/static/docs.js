// The API docs pages (/docs: Swagger UI, /redoc: ReDoc), both loaded from this server. The schema
// comes from /openapi.json, which needs the API key when the server has one: it is asked for once
// (the same key as the web page's, kept in this tab) and Swagger UI's "Try it out" sends it too.

import { currentKey } from "./apikey.js";
import { plainWords, request } from "./api.js";

async function main() {
  const target = document.querySelector("[data-viewer]");
  let spec;
  try {
    spec = await request("openapi.json");
  } catch (error) {
    const words = plainWords(error);
    target.textContent = `${words.text} ${words.detail} Reload the page to try again.`;
    return;
  }
  if (target.dataset.viewer === "redoc") {
    globalThis.Redoc.init(spec, { hideDownloadButton: false }, target);
    return;
  }
  const ui = globalThis.SwaggerUIBundle;
  ui({
    spec,
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    validatorUrl: null, // the default badge would be fetched from another host
    presets: [ui.presets.apis, ui.SwaggerUIStandalonePreset],
    requestInterceptor: (req) => {
      const key = currentKey();
      if (key && !req.headers["X-API-Key"]) req.headers["X-API-Key"] = key;
      return req;
    },
  });
}

main();
