// clipsearch search page: plain JavaScript, no libraries, no network but this server.
// Every string from the store goes into the page through textContent, never innerHTML.
"use strict";

(() => {
  const K = 60;
  const TEXTS_IN_ALL = 12; // texts shown under the images in "All" (the Texts tab shows K)
  const RERANK = 50; // images re-scored by their grid cells when "Exact objects" is on
  const CELL_WEIGHT = 1; // the best cell counts as much as the vector: one object among several
  const $ = (sel) => document.querySelector(sel);
  const state = {
    config: null,
    modality: "any",
    image: null, // File to search with
    imageUrl: null,
    counts: null, // {images, texts} in the store, from /api/stats
    current: null, // item shown in the viewer
    seq: 0, // drops answers to searches that were overtaken
  };

  // -- tiny helpers ------------------------------------------------------------------------------
  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (value === undefined || value === null) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key in node && typeof value !== "string") node[key] = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }
  const basename = (p) => (p ? String(p).split(/[\\/]/).pop() : "");
  const fmtScore = (s) => (Math.round(s * 1000) / 1000).toFixed(3);
  const fmtBytes = (n) => {
    if (n == null) return "";
    const units = ["bytes", "KB", "MB", "GB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${i ? n.toFixed(1) : n} ${units[i]}`;
  };
  const plural = (n, word) => `${n.toLocaleString()} ${word}${n === 1 ? "" : "s"}`;

  let toastTimer = null;
  function toast(message) {
    const t = $("#toast");
    t.textContent = message;
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.hidden = true; }, 3500);
  }

  function setStatus(parts, isError = false) {
    const s = $("#status");
    s.classList.toggle("error", isError);
    s.replaceChildren(...parts.map((p) => (typeof p === "string" ? document.createTextNode(p) : p)));
  }

  // -- talking to the server ------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, detail) { super(detail); this.status = status; }
  }

  async function api(path, options = {}, retried = false) {
    const res = await fetch(path, { credentials: "same-origin", ...options });
    if (res.status === 401 && !retried) {
      if (await askToken()) return api(path, options, true);
    }
    if (!res.ok) {
      let detail = `${res.status} ${res.statusText}`;
      try { detail = (await res.json()).detail || detail; } catch (_) { /* not JSON */ }
      throw new ApiError(res.status, detail);
    }
    return res;
  }

  function askToken() {
    const dialog = $("#token-dialog");
    $("#token-msg").textContent = "";
    return new Promise((resolve) => {
      const form = $("#token-form");
      const cancel = $("#token-cancel");
      const done = (ok) => {
        form.removeEventListener("submit", onSubmit);
        cancel.removeEventListener("click", onCancel);
        dialog.close();
        resolve(ok);
      };
      const onCancel = () => done(false);
      const onSubmit = async (ev) => {
        ev.preventDefault();
        const res = await fetch("/api/session", {
          method: "POST",
          credentials: "same-origin",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ token: $("#token").value }),
        });
        if (res.ok) done(true);
        else $("#token-msg").textContent = "That token was not accepted.";
      };
      form.addEventListener("submit", onSubmit);
      cancel.addEventListener("click", onCancel);
      dialog.showModal();
      $("#token").focus();
    });
  }

  // -- search ---------------------------------------------------------------------------------------
  async function search() {
    const q = $("#q").value.trim();
    if (!q && !state.image) { showHero(); return; }
    const seq = ++state.seq;
    const t0 = performance.now();
    const what = [q && `“${q}”`, state.image && `image ${state.image.name || "upload"}`].filter(Boolean).join(" + ");
    setStatus(["Searching for ", el("strong", { text: what }), "…"]);
    syncUrl(q);
    maybeAsk(q, seq);
    const request = async (modality, k) => {
      const rerank = reranking() && modality !== "text";
      let res;
      if (state.image) {
        const form = new FormData();
        form.append("image", state.image);
        if (q) form.append("q", q);
        form.append("k", String(k));
        form.append("modality", modality);
        if (rerank) {
          form.append("rerank", String(RERANK));
          form.append("cell_weight", String(CELL_WEIGHT));
        }
        res = await api("/api/search", { method: "POST", body: form });
      } else {
        const params = { q, k, modality };
        if (rerank) Object.assign(params, { rerank: RERANK, cell_weight: CELL_WEIGHT });
        res = await api(`/api/search?${new URLSearchParams(params)}`);
      }
      return res.json();
    };
    try {
      const groups = await fetchGroups(request);
      if (seq !== state.seq) return;
      render(groups, ["for ", el("strong", { text: what })], performance.now() - t0);
    } catch (err) {
      if (seq !== state.seq) return;
      $("#results").replaceChildren();
      setStatus([err.message], true);
    }
  }

  async function moreLike(item) {
    const seq = ++state.seq;
    const t0 = performance.now();
    const name = item.modality === "image" ? basename(item.path) : `passage ${item.id.slice(0, 8)}`;
    setStatus(["Finding more like ", el("strong", { text: name }), "…"]);
    $("#answer").hidden = true;
    try {
      const request = async (modality, k) =>
        (await api(`/api/items/${item.id}/similar?${new URLSearchParams({ k, modality })}`)).json();
      const groups = await fetchGroups(request);
      if (seq !== state.seq) return;
      render(groups, ["like ", el("strong", { text: name })], performance.now() - t0);
    } catch (err) {
      setStatus([err.message], true);
    }
  }

  // "All" in a store of both kinds: one list when the server calibrates its scores (images and
  // texts ranked together by confidence); else images and texts apart, in two groups, since a
  // text query scores texts far above images by cosine. Resolves to [[heading or null, hits], ...].
  async function fetchGroups(request) {
    const c = state.counts;
    if (state.modality !== "any" || !c || !c.images || !c.texts) return [[null, await request(state.modality, K)]];
    const fused = await request("any", K);
    if (!fused.length || fused[0].confidence != null) return [[null, fused]];
    const [images, texts] = await Promise.all([request("image", K), request("text", TEXTS_IN_ALL)]);
    return [["Images", images], ["Texts", texts]].filter(([, hits]) => hits.length);
  }

  function render(groups, label, ms) {
    $("#hero").hidden = true;
    const nodes = [];
    let index = 0;
    for (const [heading, hits] of groups) {
      if (heading && groups.length > 1) {
        nodes.push(el("h2", { class: "group-title", text: `${heading} · ${hits.length.toLocaleString()}` }));
      }
      const best = hits.length ? hits[0].score : 1; // the score bars are relative within a group
      const worst = hits.length ? hits[hits.length - 1].score : 0;
      for (const hit of hits) nodes.push(card(hit, index++, best, worst));
    }
    // calibrated results say whether any is a good match; when none is, say so before them
    const all = groups.flatMap(([, hits]) => hits);
    const noGood = all.length > 0 && all.every((h) => h.good_match === false);
    if (noGood) {
      nodes.unshift(el("p", { class: "no-match", role: "note", text: "No good match: nothing here matches the query well. The nearest results are below." }));
    }
    $("#results").replaceChildren(...nodes);
    setStatus(
      index
        ? [noGood ? "No good match · " : "", el("strong", { text: plural(index, "result") }), " ", ...label, ` · ${Math.round(ms)} ms`]
        : ["Nothing found ", ...label, state.modality !== "any" ? ` among ${state.modality}s` : ""],
    );
  }

  function card(hit, index, best, worst) {
    // the bar: the calibrated confidence (0-100%) when there is one, else the score relative to the group's
    const calibrated = hit.confidence != null;
    const relative = calibrated ? hit.confidence : best > worst ? (hit.score - worst) / (best - worst) : 1;
    const bar = el("div", { class: `bar${calibrated ? ` ${hit.match}` : ""}` });
    bar.style.width = `${Math.max(6, Math.round(relative * 100))}%`;
    const caption = el(
      "div",
      { class: "caption" },
      el("span", { class: "name", text: hit.modality === "image" ? basename(hit.path) : basename(hit.path) || "text" }),
      calibrated
        ? el("span", {
            class: `match ${hit.match}`,
            title: `confidence ${Math.round(hit.confidence * 100)}%: how surely this matches, calibrated for this store`,
            text: hit.match,
          })
        : "",
      el("span", { class: "score", title: "cosine similarity", text: fmtScore(hit.score) }),
    );
    let body;
    if (hit.modality === "image") {
      const img = el("img", { alt: basename(hit.path), loading: "lazy", decoding: "async" });
      img.addEventListener("load", () => img.classList.add("loaded"));
      img.addEventListener("error", () => { img.parentElement.classList.add("broken"); img.parentElement.textContent = "no preview"; });
      img.src = `/api/items/${hit.id}/thumbnail`;
      body = el("div", { class: "thumb" }, img);
    } else {
      body = el("p", { class: "passage-snippet", text: (hit.text || "").slice(0, 600) });
    }
    const node = el(
      "a",
      {
        class: `card ${hit.modality === "image" ? "image-card" : "text-card"}`,
        href: hit.modality === "image" ? `/api/items/${hit.id}/image` : `/api/items/${hit.id}`,
        "data-id": hit.id,
        "data-score": String(hit.score),
        "data-confidence": hit.confidence != null ? String(hit.confidence) : "",
      },
      body,
      bar,
      caption,
    );
    if (hit.caption && hit.modality === "image") node.title = hit.caption; // what its table says of it
    node.style.animationDelay = `${Math.min(index, 24) * 18}ms`;
    node.addEventListener("click", (ev) => {
      if (ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.button !== 0) return;
      ev.preventDefault();
      openViewer(hit);
    });
    return node;
  }

  async function maybeAsk(q, seq) {
    const box = $("#answer");
    box.hidden = true;
    const f = state.config && state.config.features;
    if (!f || !f.ask || state.image || !q.endsWith("?")) return;
    try {
      const res = await api("/api/ask", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ question: q, k: 5 }),
      });
      const out = await res.json();
      if (seq !== state.seq || !out.answer) return;
      if (out.declined) {
        // nothing answers it well: say so plainly, without a confident-looking answer
        box.replaceChildren(
          el("div", { class: "label", text: "No good answer" }),
          el("div", { class: "source", text: out.declined_because || "" }),
        );
        box.hidden = false;
        return;
      }
      box.replaceChildren(
        el("div", { class: "label", text: out.kind === "span" ? "Answer" : "Best matching sentence" }),
        el("div", { class: "text", text: out.answer }),
        el("div", { class: "source", text: out.source ? `from ${basename(out.source)}` : "" }),
      );
      box.hidden = false;
    } catch (_) {
      /* no passages to answer from: the results speak for themselves */
    }
  }

  function showHero() {
    state.seq++;
    $("#results").replaceChildren();
    $("#answer").hidden = true;
    setStatus([]);
    $("#hero").hidden = false;
    syncUrl("");
  }

  // Grid re-ranking scores images only; the server searches images when it is on.
  function reranking() {
    return !$("#rerank-label").hidden && $("#rerank").checked && state.modality !== "text";
  }

  function syncUrl(q) {
    const url = new URL(window.location.href);
    if (q) url.searchParams.set("q", q);
    else url.searchParams.delete("q");
    if (state.modality !== "any") url.searchParams.set("modality", state.modality);
    else url.searchParams.delete("modality");
    if (reranking()) url.searchParams.set("rerank", "1");
    else url.searchParams.delete("rerank");
    history.replaceState(null, "", url);
  }

  // -- searching with an image ------------------------------------------------------------------------
  function setImage(file) {
    if (!file) return;
    if (!file.type.startsWith("image/") && file.type !== "") { toast(`${file.name} is not an image`); return; }
    if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
    state.image = file;
    state.imageUrl = URL.createObjectURL(file);
    $("#chip-img").src = state.imageUrl;
    $("#chip-name").textContent = file.name || "image";
    $("#image-chip").hidden = false;
    search();
  }

  function clearImage() {
    if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
    state.image = null;
    state.imageUrl = null;
    $("#image-chip").hidden = true;
    $("#file").value = "";
    search();
  }

  function setupDrop() {
    const overlay = $("#drop-overlay");
    let depth = 0;
    const hasFiles = (ev) => ev.dataTransfer && Array.from(ev.dataTransfer.types || []).includes("Files");
    document.addEventListener("dragenter", (ev) => {
      if (!hasFiles(ev)) return;
      ev.preventDefault();
      depth++;
      overlay.hidden = false;
    });
    document.addEventListener("dragover", (ev) => { if (hasFiles(ev)) ev.preventDefault(); });
    document.addEventListener("dragleave", () => { depth = Math.max(0, depth - 1); if (!depth) overlay.hidden = true; });
    document.addEventListener("drop", (ev) => {
      if (!hasFiles(ev)) return;
      ev.preventDefault();
      depth = 0;
      overlay.hidden = true;
      const file = Array.from(ev.dataTransfer.files).find((f) => f.type.startsWith("image/")) || ev.dataTransfer.files[0];
      if (file) setImage(file);
    });
    document.addEventListener("paste", (ev) => {
      if (document.activeElement && document.activeElement.closest("dialog")) return;
      const file = Array.from(ev.clipboardData ? ev.clipboardData.files : []).find((f) => f.type.startsWith("image/"));
      if (file) { ev.preventDefault(); setImage(file); }
    });
  }

  // -- the viewer ---------------------------------------------------------------------------------------
  async function openViewer(hit) {
    const dialog = $("#viewer");
    state.current = hit;
    const isImage = hit.modality === "image";
    $("#viewer-title").textContent = isImage ? basename(hit.path) : `Passage ${hit.id.slice(0, 8)}`;
    $("#frame").hidden = !isImage;
    $("#viewer-text").hidden = isImage;
    $("#viewer-overlay").hidden = true;
    $("#viewer-overlay").removeAttribute("src");
    $("#overlay-toggle-label").hidden = true;
    $("#where-msg").textContent = "";
    $("#classify-out").replaceChildren();
    $("#open-original").hidden = !isImage;
    const f = (state.config && state.config.features) || {};
    $("#where").hidden = !(isImage && f.localize);
    $("#classify").hidden = !(isImage && f.classify);
    $("#where-q").value = $("#q").value.trim();
    if (isImage) {
      $("#viewer-img").src = `/api/items/${hit.id}/image`;
      $("#viewer-img").alt = basename(hit.path);
      $("#open-original").href = `/api/items/${hit.id}/image`;
    } else {
      $("#viewer-img").removeAttribute("src");
      $("#viewer-text").textContent = hit.text || "";
    }
    $("#viewer-meta").replaceChildren(...metaRows({ ...hit }));
    if (!dialog.open) dialog.showModal();
    try {
      const item = await (await api(`/api/items/${hit.id}`)).json();
      if (state.current !== hit) return;
      $("#viewer-meta").replaceChildren(...metaRows({ ...item, score: hit.score, confidence: hit.confidence, match: hit.match }));
    } catch (err) {
      toast(err.message);
    }
  }

  function metaRows(item) {
    const rows = [];
    const add = (label, value) => {
      if (value === undefined || value === null || value === "") return;
      rows.push(el("dt", { text: label }), el("dd", { text: String(value) }));
    };
    if (item.score !== undefined) add("Score", fmtScore(item.score));
    if (item.confidence != null) add("Confidence", `${Math.round(item.confidence * 100)}% (${item.match})`);
    add("Label", item.label);
    add("Caption", item.caption);
    if (item.width && item.height) add("Size", `${item.width} × ${item.height}`);
    if (item.modality === "image") add("File size", fmtBytes(item.size));
    add("Path", item.path);
    if (item.extra_paths && item.extra_paths.length) add("Also at", item.extra_paths.join("\n"));
    if (item.source && item.source !== item.path) add("Source", item.source);
    if (item.record) add("Record", item.record);
    if (item.added) add("Added", new Date(item.added * 1000).toLocaleString());
    add("Id", item.id);
    return rows;
  }

  async function showWhere(ev) {
    ev.preventDefault();
    const hit = state.current;
    const prompt = $("#where-q").value.trim();
    if (!hit || !prompt) { $("#where-q").focus(); return; }
    const busy = $("#stage-busy");
    busy.hidden = false;
    $("#where-msg").textContent = "Scoring regions of the image…";
    try {
      const res = await api(`/api/items/${hit.id}/localize?${new URLSearchParams({ prompt, format: "png" })}`);
      const url = URL.createObjectURL(await res.blob());
      if (state.current !== hit) return;
      const overlay = $("#viewer-overlay");
      if (overlay.src.startsWith("blob:")) URL.revokeObjectURL(overlay.src);
      overlay.src = url;
      overlay.hidden = !$("#overlay-toggle").checked;
      $("#overlay-toggle-label").hidden = false;
      $("#where-msg").textContent = `Brighter areas match “${prompt}” better; the box is the best region.`;
    } catch (err) {
      $("#where-msg").textContent = err.message;
    } finally {
      busy.hidden = true;
    }
  }

  async function classify(ev) {
    ev.preventDefault();
    const hit = state.current;
    const labels = $("#labels").value.trim();
    if (!hit || !labels) { $("#labels").focus(); return; }
    const out = $("#classify-out");
    out.replaceChildren(el("li", { class: "muted", text: "Classifying…" }));
    try {
      const form = new FormData();
      form.append("id", hit.id);
      form.append("labels", labels);
      form.append("top", "5");
      const res = await api("/api/classify", { method: "POST", body: form });
      const data = await res.json();
      if (state.current !== hit) return;
      out.replaceChildren(
        ...data.predictions.map((p) => {
          const fill = el("div", { class: "fill" });
          fill.style.width = `${Math.max(1, Math.round(p.prob * 100))}%`;
          return el(
            "li",
            {},
            el("span", { text: p.label }),
            el("span", { class: "muted", text: `${(p.prob * 100).toFixed(1)}%` }),
            el("div", { class: "track" }, fill),
          );
        }),
      );
    } catch (err) {
      out.replaceChildren(el("li", { class: "error", text: err.message }));
    }
  }

  // -- adding images -------------------------------------------------------------------------------------
  async function addImages(files) {
    if (!files.length) return;
    const form = new FormData();
    for (const f of files) form.append("files", f);
    toast(`Adding ${plural(files.length, "image")}…`);
    try {
      const out = await (await api("/api/items", { method: "POST", body: form })).json();
      const failed = out.failed.length ? `; ${out.failed.length} refused (${out.failed[0].name}: ${out.failed[0].reason})` : "";
      toast(`Added ${plural(out.added.length, "image")}${failed}`);
      loadStats();
    } catch (err) {
      toast(err.message);
    } finally {
      $("#add-files").value = "";
    }
  }

  // -- start-up --------------------------------------------------------------------------------------------
  async function loadStats() {
    try {
      const s = await (await api("/api/stats")).json();
      state.counts = { images: s.images, texts: s.texts };
      const counts = `${plural(s.images, "image")} · ${plural(s.texts, "text")}`;
      $("#hero-stats").textContent = s.count ? `${counts} in this collection.` : "The collection is empty: index some files with clipsearch index.";
      $("#footer").textContent = `${counts} · model ${basename(s.model)} · ${s.dim}-d`;
    } catch (err) {
      $("#footer").textContent = err.message;
    }
  }

  function setModality(value) {
    state.modality = value;
    for (const b of document.querySelectorAll(".segmented button")) {
      b.setAttribute("aria-checked", String(b.dataset.modality === value));
    }
  }

  async function start() {
    $("#search-form").addEventListener("submit", (ev) => { ev.preventDefault(); search(); });
    $("#file").addEventListener("change", (ev) => setImage(ev.target.files[0]));
    $("#chip-clear").addEventListener("click", clearImage);
    for (const b of document.querySelectorAll(".segmented button")) {
      b.addEventListener("click", () => {
        setModality(b.dataset.modality);
        if ($("#q").value.trim() || state.image) search();
      });
    }
    $("#viewer-close").addEventListener("click", () => $("#viewer").close());
    $("#viewer").addEventListener("click", (ev) => { if (ev.target === $("#viewer")) $("#viewer").close(); });
    $("#more-like").addEventListener("click", () => {
      const item = state.current;
      $("#viewer").close();
      if (item) moreLike(item);
    });
    $("#where-form").addEventListener("submit", showWhere);
    $("#overlay-toggle").addEventListener("change", (ev) => { $("#viewer-overlay").hidden = !ev.target.checked; });
    $("#classify-form").addEventListener("submit", classify);
    $("#rerank").addEventListener("change", () => { if ($("#q").value.trim() || state.image) search(); });
    $("#add-files").addEventListener("change", (ev) => addImages(Array.from(ev.target.files)));
    document.addEventListener("keydown", (ev) => {
      if (ev.key === "/" && document.activeElement !== $("#q") && !document.querySelector("dialog[open]")) {
        ev.preventDefault();
        $("#q").focus();
      }
    });
    setupDrop();

    try {
      state.config = await (await api("/api/config")).json();
    } catch (err) {
      setStatus([err.message], true);
      return;
    }
    const f = state.config.features;
    $("#pick-image").hidden = !f.search_by_image;
    $("#add-button").hidden = !f.add;
    $("#rerank-label").hidden = !f.rerank;
    await loadStats(); // the counts decide how "All" asks (see fetchGroups)

    const params = new URLSearchParams(window.location.search);
    if (["image", "text", "any"].includes(params.get("modality"))) setModality(params.get("modality"));
    $("#rerank").checked = params.get("rerank") === "1";
    if (params.get("q")) {
      $("#q").value = params.get("q");
      search();
    } else {
      $("#q").focus();
    }
  }

  document.addEventListener("DOMContentLoaded", start);
})();
