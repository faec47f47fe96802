// easel web UI: a form over the native JSON API (/api/v1/...), nothing else.
// Every generation is a job in the server's one queue; progress comes as server-sent events.
// Auth is the browser's: with an API key the server challenges with HTTP Basic, and the browser
// sends the key with every request of this page (fetch, EventSource, <img>) once signed in.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);

  class ApiError extends Error {
    constructor(message, field, status, type) {
      super(message);
      this.field = field || null;
      this.status = status;
      this.type = type || null;
    }
  }

  // All page state lives here (one object, no scattered globals).
  const state = {
    models: [],
    info: null,          // /api/v1/models/info for the selected model
    control: { models: ["demo"], preprocessors: ["none", "canny"], modes: [] },
    job: null,           // the job being watched
    events: null,        // its EventSource
    sent: new Map(),     // job id -> the request as sent (with its images), for "reuse settings"
    lastSeed: null,
    initImage: null,     // data URL of the img2img init image
    referenceImages: [], // data URLs of the reference images (instruction editing: reference_images)
    initLoads: 0,        // counts setInit calls: a slow image load that was replaced is ignored
    canInpaint: true,    // the selected model's family inpaints
    maskPainted: false,  // the mask canvas holds something to repaint
    stroke: null,        // the mask stroke being painted: its last point
    units: 0,            // counter for control unit ids
    loras: [],           // /api/v1/loras: the server's LoRA folder
    loraRows: 0,         // counter for LoRA row ids
    pngFields: null,     // request fields read by PNG info
  };

  // ---- the API --------------------------------------------------------------------------------

  async function api(path, { method, body } = {}) {
    const init = { method: method || (body === undefined ? "GET" : "POST"), headers: {}, credentials: "same-origin" };
    if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      throw new ApiError(`The server did not answer (${error.message}).`, null, 0);
    }
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = null; }
    if (!response.ok) {
      const problem = (data && data.error) || {};
      let message = problem.message || text || response.statusText;
      if (response.status === 401) {
        message = `API key required: ${message}. Reload the page and sign in with the server's key as password.`;
      } else if (response.status === 429) {
        message = `The queue is full: ${message}`;
      }
      throw new ApiError(message, problem.field, response.status, problem.type);
    }
    return data;
  }

  // ---- messages in place ---------------------------------------------------------------------

  const FIELD_IDS = {
    model: "model", prompt: "prompt", negative_prompt: "negative", prompt_syntax: "syntax",
    width: "width", height: "height", steps: "steps", guidance_scale: "guidance", seed: "seed",
    num_images: "num-images", scheduler: "scheduler", vae: "vae", clip_skip: "clip-skip", init_image: "init-drop",
    styles: "styles", reference_images: "reference-files",
    strength: "strength", tiling: "tiling", variation_seed: "variation-seed",
    variation_strength: "variation-strength", seed_resize_from: "seed-resize-width",
    refiner: "refiner", refiner_at: "refiner-at", prior: "prior", prior_steps: "prior-steps",
    prior_guidance_scale: "prior-guidance", mask_image: "mask-editor", mask_blur: "mask-blur",
    true_cfg_scale: "true-cfg",
    invert_mask: "mask-invert", inpaint_area: "inpaint-area", inpaint_padding: "inpaint-padding",
    masked_content: "masked-content", outpaint: "outpaint-fields", paste_back: "paste-back",
    loras: "loras",
    hires: "hires-enable", "hires.scale": "hires-scale", "hires.upscaler": "hires-upscaler",
    "hires.steps": "hires-steps", "hires.strength": "hires-strength",
  };
  const UNIT_FIELDS = {
    model: "model", image: "file", preprocessor: "preprocessor", conditioning_scale: "scale",
    guidance_start: "start", guidance_end: "end", canny_low: "low", canny_high: "high", mode: "mode",
  };

  function showMessage(id, message, kind = "error") {
    const box = $(id);
    box.textContent = message;
    box.className = kind;
    box.hidden = !message;
  }

  function clearInvalid() {
    document.querySelectorAll(".invalid").forEach((el) => el.classList.remove("invalid"));
    document.querySelectorAll(".field-error").forEach((el) => el.remove());
    showMessage("error", "");
    showMessage("error-top", "");
    showMessage("notice", "", "notice");
  }

  function markField(field) {
    if (!field) return;
    let element = null;
    const unit = /^controls\[(\d+)\]\.?(\w*)/.exec(field);
    if (unit) {
      const node = document.querySelectorAll("#control-units .control-unit")[Number(unit[1])];
      const suffix = UNIT_FIELDS[unit[2]];
      element = node && suffix ? $(`${node.id}-${suffix}`) : node;
      if (element && element.type === "file") element = element.closest("label");
    } else if (/^loras\[\d+\]/.test(field)) {
      element = loraElement(field);
    } else if (FIELD_IDS[field.replace(/\[\d+\]$/, "")]) {  // styles[1]: the styles list
      element = $(FIELD_IDS[field.replace(/\[\d+\]$/, "")]);
    }
    if (element) element.classList.add("invalid");
    return element;
  }

  // a generation error shows where the eye is: at the top of the form and under the field it
  // names (scrolled into view), as well as under the Generate button
  function showError(error, box = "error") {
    const message = error.message || String(error);
    const kind = error.type === "Cancelled" ? "notice" : "error";
    showMessage(box, message, kind);
    if (box !== "error" || kind !== "error") return;
    showMessage("error-top", message);
    const element = markField(error.field);
    if (element) {
      const note = document.createElement("p");
      note.className = "field-error";
      note.setAttribute("role", "alert");
      note.textContent = message;
      (element.closest("label, fieldset, .row, .control-unit, .lora-row") || element).after(note);
      element.scrollIntoView({ block: "center" });
    } else {
      $("error-top").scrollIntoView({ block: "nearest" });
    }
  }

  // ---- reading the form ----------------------------------------------------------------------

  const number = (id) => {
    const value = $(id).value.trim();
    return value === "" ? null : Number(value);
  };

  // variation seeds: sent only when set (the server refuses them where they cannot apply)
  function variationRequest() {
    const fields = {};
    if ($("variation").disabled) return fields;
    const seed = number("variation-seed");
    if (seed !== null && seed !== -1) fields.variation_seed = seed;
    const strength = number("variation-strength");
    if (strength !== null && (strength !== 0 || seed !== null)) fields.variation_strength = strength;
    const width = number("seed-resize-width");
    const height = number("seed-resize-height");
    if (width !== null || height !== null) fields.seed_resize_from = [width, height];
    return fields;
  }

  // hires fix: sent when ticked, for text to image (the server refuses it with an init image)
  function hiresRequest() {
    if ($("hires").disabled || !$("hires-enable").checked) return {};
    const hires = { upscaler: $("hires-upscaler").value || "Latent" };
    for (const [field, id] of [["scale", "hires-scale"], ["steps", "hires-steps"], ["strength", "hires-strength"]]) {
      const value = number(id);
      if (value !== null) hires[field] = value;
    }
    return { hires };
  }

  function fillHires(hires) {
    $("hires-enable").checked = Boolean(hires);
    const given = hires || {};
    const upscaler = given.upscaler || "Latent";
    if (![...$("hires-upscaler").options].some((o) => o.value === upscaler)) {
      $("hires-upscaler").add(new Option(upscaler, upscaler));
    }
    $("hires-upscaler").value = upscaler;
    $("hires-scale").value = given.scale ?? (given.width || given.height ? "" : 2);
    $("hires-steps").value = given.steps ?? "";
    $("hires-strength").value = given.strength ?? 0.7;
  }

  // the hires fix's upscalers: A1111's latent modes, then the picture upscalers the server lists
  const LATENT_UPSCALERS = ["Latent", "Latent (antialiased)", "Latent (bicubic)",
    "Latent (bicubic antialiased)", "Latent (nearest)", "Latent (nearest-exact)"];
  async function loadHiresUpscalers() {
    let names = ["None", "Lanczos", "Nearest"];
    try {
      names = await api("/api/v1/upscalers");
    } catch (error) {
      // an older server: the built-in ones
    }
    const chosen = $("hires-upscaler").value || "Latent";
    $("hires-upscaler").replaceChildren(...[...LATENT_UPSCALERS, ...names].map((n) => new Option(n, n)));
    $("hires-upscaler").value = chosen;
  }

  function buildRequest() {
    const request = {
      prompt: $("prompt").value,
      negative_prompt: $("negative").value,
      prompt_syntax: $("syntax").value,
      num_images: number("num-images") ?? 1,
    };
    if ($("model").value) request.model = $("model").value;
    for (const [field, id] of [["width", "width"], ["height", "height"], ["steps", "steps"],
                               ["guidance_scale", "guidance"]]) {
      const value = number(id);
      if (value !== null) request[field] = value;
    }
    const seed = number("seed");
    if (seed !== null && seed !== -1) request.seed = seed;
    if ($("scheduler").value) request.scheduler = $("scheduler").value;
    if ($("vae").value) request.vae = $("vae").value;
    const clipSkip = number("clip-skip");
    if (clipSkip !== null && !$("clip-skip").disabled) request.clip_skip = clipSkip;
    const styles = [...$("styles").selectedOptions].map((o) => o.value);
    if (styles.length && !$("styles-row").hidden) request.styles = styles;
    if ($("tiling").checked) request.tiling = true;
    Object.assign(request, variationRequest());
    Object.assign(request, hiresRequest());  // with an init image the server says hires is txt2img only
    if (state.initImage) {
      request.init_image = state.initImage;
      const strength = number("strength");
      if (strength !== null) request.strength = strength;
      Object.assign(request, inpaintRequest());
    }
    if (state.referenceImages.length && !$("reference-files").disabled) {
      request.reference_images = state.referenceImages;
    }
    const units = [...document.querySelectorAll("#control-units .control-unit")];
    if (units.length) request.controls = units.map(unitRequest);
    const loras = loraRequest();
    if (loras.length) request.loras = loras;
    if (!$("refiner-fields").hidden && $("refiner").value) {
      request.refiner = $("refiner").value;
      if (number("refiner-at") !== null) request.refiner_at = number("refiner-at");
    }
    // FLUX.1's real CFG (a family-only field: sent only where the model takes it)
    if (!$("true-cfg-fields").hidden && number("true-cfg") !== null) {
      request.true_cfg_scale = number("true-cfg");
    }
    if (!$("prior-fields").hidden) {
      if ($("prior").value) request.prior = $("prior").value;
      if (number("prior-steps") !== null) request.prior_steps = number("prior-steps");
      if (number("prior-guidance") !== null) request.prior_guidance_scale = number("prior-guidance");
    }
    return request;
  }

  // inpainting fields: only with a mask or outpaint, on a model that inpaints (else plain img2img)
  function inpaintRequest() {
    if (!state.canInpaint) return {};
    const mask = maskDataUrl();
    const outpaint = outpaintSides();
    if (!mask && !outpaint) return {};
    const fields = {
      masked_content: $("masked-content").value,
      inpaint_area: $("inpaint-area").value,
      paste_back: $("paste-back").checked,
    };
    if (mask) fields.mask_image = mask;
    if (outpaint) fields.outpaint = outpaint;
    for (const [field, id] of [["mask_blur", "mask-blur"], ["inpaint_padding", "inpaint-padding"]]) {
      const value = number(id);
      if (value !== null) fields[field] = value;
    }
    return fields;
  }

  const OUTPAINT_IDS = ["outpaint-left", "outpaint-top", "outpaint-right", "outpaint-bottom"];

  function outpaintSides() {
    const sides = OUTPAINT_IDS.map((id) => number(id) ?? 0);
    return sides.some((side) => side !== 0) ? sides : null;
  }

  function unitRequest(node) {
    const part = (suffix) => $(`${node.id}-${suffix}`);
    const unit = {
      model: part("model").value,
      image: node.dataset.image || "",
      preprocessor: part("preprocessor").value,
      conditioning_scale: Number(part("scale").value),
      guidance_start: Number(part("start").value),
      guidance_end: Number(part("end").value),
    };
    if (part("mode").value) unit.mode = part("mode").value;  // union ControlNets only
    if (unit.preprocessor === "canny") {
      unit.canny_low = Number(part("low").value);
      unit.canny_high = Number(part("high").value);
    }
    return unit;
  }

  // ---- writing the form (reuse settings, PNG info) -------------------------------------------

  function selectModel(model) {
    const select = $("model");
    if (!model) { select.value = "easel-demo"; return; }
    const wanted = String(model).split(" [")[0];
    const match = state.models.find((m) => m.title === wanted)
      || state.models.find((m) => m.name === wanted || m.title.endsWith(`/${wanted}`));
    if (match) select.value = match.title;
    else {
      const option = new Option(wanted, wanted);
      select.add(option);
      select.value = wanted;
    }
  }

  async function fillForm(fields) {
    const set = (id, value) => { $(id).value = value === null || value === undefined ? "" : value; };
    if ("model" in fields) selectModel(fields.model);
    set("prompt", fields.prompt ?? "");
    set("negative", fields.negative_prompt ?? "");
    if (fields.prompt_syntax) set("syntax", fields.prompt_syntax);
    showLoraInsert();
    set("width", fields.width);
    set("height", fields.height);
    set("steps", fields.steps);
    set("guidance", fields.guidance_scale);
    set("seed", fields.seed);
    set("num-images", fields.num_images ?? 1);
    const scheduler = fields.scheduler || "";
    if (scheduler && ![...$("scheduler").options].some((o) => o.value === scheduler)) {
      $("scheduler").add(new Option(scheduler, scheduler));
    }
    set("scheduler", scheduler);
    const vae = fields.vae || "";
    if (vae && ![...$("vae").options].some((o) => o.value === vae)) $("vae").add(new Option(vae, vae));
    set("vae", vae);
    set("clip-skip", fields.clip_skip);
    $("tiling").checked = fields.tiling === true;
    set("variation-seed", fields.variation_seed);
    set("variation-strength", fields.variation_strength || null);
    set("seed-resize-width", (fields.seed_resize_from || [])[0]);
    set("seed-resize-height", (fields.seed_resize_from || [])[1]);
    fillHires(fields.hires);
    const isData = (value) => typeof value === "string" && value.startsWith("data:");
    await setInit(isData(fields.init_image) ? fields.init_image : null);
    setReferences((fields.reference_images || []).filter(isData));
    if (fields.strength !== null && fields.strength !== undefined) set("strength", fields.strength);
    set("mask-blur", fields.mask_blur ?? 4);
    set("masked-content", fields.masked_content || "original");
    set("inpaint-area", fields.inpaint_area || "whole");
    set("inpaint-padding", fields.inpaint_padding ?? 32);
    $("paste-back").checked = fields.paste_back !== false;
    const outpaint = Array.isArray(fields.outpaint) && fields.outpaint.length === 4
      ? fields.outpaint : [0, 0, 0, 0];
    OUTPAINT_IDS.forEach((id, i) => set(id, outpaint[i]));
    // the mask as painted: invert_mask is applied to it here (the page sends the inverted mask)
    if (state.initImage && isData(fields.mask_image)) {
      await loadMask(fields.mask_image, fields.invert_mask === true);
    }
    maskChanged();
    $("control-units").replaceChildren();
    for (const unit of fields.controls || []) addUnit(unit);
    $("lora-rows").replaceChildren();
    for (const lora of fields.loras || []) {
      if (lora && typeof lora === "object") addLora(lora.name, lora.weight);
      else if (typeof lora === "string" && lora) addLora(lora);
    }
    set("refiner", fields.refiner || "");
    set("refiner-at", fields.refiner_at);
    set("prior", fields.prior || "");
    set("prior-steps", fields.prior_steps);
    set("prior-guidance", fields.prior_guidance_scale);
    set("true-cfg", fields.true_cfg_scale);
    await modelChanged();
  }

  // ---- models, family fields, token counts ---------------------------------------------------

  async function loadOptions() {
    const [models, schedulers, control, vaes, styles] = await Promise.all([
      api("/api/v1/models"), api("/api/v1/schedulers"), api("/api/v1/control"), api("/api/v1/vaes"),
      api("/api/v1/styles"),
    ]);
    for (const style of styles) $("styles").add(new Option(style.name, style.name));
    $("styles-row").hidden = styles.length === 0;  // only offered when styles.csv has some
    state.models = models;
    state.control = control;
    for (const id of ["model", "refiner", "prior"]) {
      for (const model of models) $(id).add(new Option(model.title, model.title));
    }
    // the server's current model (what a request without a model gets), not the first listed
    const current = models.find((m) => m.default) || models[0];
    if (current) $("model").value = current.title;
    for (const name of schedulers) $("scheduler").add(new Option(name, name));
    for (const name of vaes) $("vae").add(new Option(name, name));
    $("connection").textContent = `${models.length} ${models.length === 1 ? "model" : "models"}`;
  }

  async function modelChanged() {
    try {
      state.info = await api(`/api/v1/models/info?model=${encodeURIComponent($("model").value)}`);
    } catch (error) {
      state.info = null;
      $("model-family").textContent = "";
      showError(error);
      return;
    }
    const info = state.info;
    $("model-family").textContent = `${info.family}: ${info.tasks.join(", ")}`;
    $("refiner-fields").hidden = !info.options.includes("refiner");
    $("prior-fields").hidden = !info.options.includes("prior");
    $("true-cfg-fields").hidden = !info.options.includes("true_cfg_scale");
    $("control-add").disabled = !info.controlnet;
    $("control-unavailable").hidden = info.controlnet;
    // Kandinsky's prior makes one CLIP embedding from the last layer: no clip skip there
    $("clip-skip").disabled = info.family.startsWith("kandinsky");
    // its decoder's noise follows its prior's on one generator: no variation seeds there
    $("variation").disabled = info.family.startsWith("kandinsky");
    $("hires").disabled = !["sd15", "sdxl"].includes(info.family);  // easel.hires.HIRES_FAMILIES
    showLoraFields();
    state.canInpaint = info.tasks.includes("inpaint");
    const imageToImage = info.tasks.includes("img2img") || state.canInpaint;
    const canEdit = info.tasks.includes("edit");  // instruction editing: reference images
    $("img2img").disabled = !imageToImage && !canEdit;
    // an edit-only family (FLUX.1 Kontext) takes reference images, not an init image and strength
    for (const id of ["init-file", "strength"]) $(id).disabled = !imageToImage;
    for (const id of ["reference-files", "reference-clear"]) $(id).disabled = !canEdit;
    showInpaintFields();
    $("steps").placeholder = info.defaults.steps;
    $("guidance").placeholder = info.defaults.guidance_scale;
    showEffectiveSteps();
    countTokens("prompt", "prompt-tokens");
    countTokens("negative", "negative-tokens");
  }

  const timers = {};
  function debounce(key, fn, ms = 250) {
    clearTimeout(timers[key]);
    timers[key] = setTimeout(fn, ms);
  }

  async function countTokens(inputId, outputId) {
    const body = { prompt: $(inputId).value, model: $("model").value || null, prompt_syntax: $("syntax").value };
    const output = $(outputId);
    try {
      const count = await api("/api/v1/tokens", { body });
      output.textContent = count.text;
      output.classList.remove("invalid");
      output.title = count.chunks > 1 ? "long prompt: encoded in 75-token chunks" : "";
    } catch (error) {
      output.textContent = error.message;
      output.classList.add("invalid");
    }
  }

  function showEffectiveSteps() {
    const strength = number("strength");
    const steps = number("steps") ?? (state.info ? state.info.defaults.steps : null);
    $("effective-steps").textContent = state.initImage && strength !== null && steps !== null
      ? `${strength} x ${steps} = ${Math.floor(steps * strength)} steps` : "";
  }

  // ---- img2img -------------------------------------------------------------------------------

  function readFile(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
  }

  async function urlToDataUrl(url) {
    const response = await fetch(url, { credentials: "same-origin" });
    if (!response.ok) throw new ApiError(`Could not read ${url} (HTTP ${response.status}).`, null, response.status);
    return readFile(await response.blob());
  }

  // The reference images of an instruction edit (data URLs; [] removes them): sent as
  // reference_images, which makes the request an edit on a model that edits (FLUX.1 Kontext).
  function setReferences(dataUrls) {
    state.referenceImages = dataUrls;
    const count = dataUrls.length;
    $("reference-clear").hidden = !count;
    $("reference-status").textContent = count
      ? `${count} reference image${count === 1 ? "" : "s"}: sent as reference_images (instruction editing)`
      : "Instruction editing (FLUX.1 Kontext, FLUX.2 [klein]): the prompt says what to change in these images; no init image needed.";
    if (!count) $("reference-files").value = "";
  }

  // Sets (or with null removes) the init image; the mask is cleared and sized to the image once
  // it has loaded (the returned promise). A later call wins over a slower earlier one.
  async function setInit(dataUrl) {
    state.initImage = dataUrl;
    const load = ++state.initLoads;
    const preview = $("init-preview");
    const canvas = $("mask-canvas");
    canvas.width = 0;
    canvas.height = 0;
    state.stroke = null;
    $("init-clear").hidden = !dataUrl;
    $("init-hint").hidden = !!dataUrl;
    $("mask-editor").hidden = !dataUrl;
    preview.hidden = !dataUrl;
    if (dataUrl) preview.src = dataUrl;
    else preview.removeAttribute("src");
    maskChanged();
    showEffectiveSteps();
    if (!dataUrl) return;
    try {
      await preview.decode();
    } catch {
      return;   // not an image the browser reads: the server will say so
    }
    if (load !== state.initLoads) return;
    const [width, height] = [preview.naturalWidth, preview.naturalHeight];
    canvas.width = width;
    canvas.height = height;
    const editor = $("mask-editor");   // the image's shape, at most MASK_HEIGHT pixels high on screen
    editor.style.aspectRatio = `${width} / ${height}`;
    editor.style.width = `min(100%, ${Math.round((MASK_HEIGHT * width) / height)}px)`;
    maskChanged();
  }

  // ---- the inpainting mask -------------------------------------------------------------------
  // The mask is the alpha of #mask-canvas (the init image's pixel size, shown scaled over it,
  // in MASK_RGB at half opacity): painted = repaint. It is sent as an opaque grey PNG.

  const MASK_RGB = [59, 91, 219];   // --accent
  const MASK_HEIGHT = 320;

  const maskContext = () => $("mask-canvas").getContext("2d", { willReadFrequently: true });

  function maskPixels() {
    const canvas = $("mask-canvas");
    return canvas.width ? maskContext().getImageData(0, 0, canvas.width, canvas.height) : null;
  }

  function maskChanged() {
    const pixels = maskPixels();
    let painted = false;
    if (pixels) {
      for (let i = 3; i < pixels.data.length; i += 4) {
        if (pixels.data[i]) { painted = true; break; }
      }
    }
    state.maskPainted = painted;
    $("mask-editor").dataset.mask = painted ? "painted" : "empty";
    $("mask-status").textContent = painted
      ? "Masked: only the painted area is repainted."
      : "No mask: plain image to image. Paint over the image where it should change.";
    $("mask-invert").disabled = !pixels;
    $("mask-clear").disabled = !painted;
    showInpaintFields();
  }

  function showInpaintFields() {
    const editable = !!state.initImage && state.canInpaint;
    $("inpaint-fields").hidden = !editable;
    $("mask-canvas").hidden = !editable;
    $("inpaint-unavailable").hidden = !state.initImage || state.canInpaint;
    const outpaint = outpaintSides();
    $("inpaint-options").hidden = !editable || !(state.maskPainted || outpaint);
    $("inpaint-padding").disabled = $("inpaint-area").value !== "masked";   // used by "only masked"
    const size = $("outpaint-size");
    const canvas = $("mask-canvas");
    size.hidden = !editable || !outpaint;
    if (!size.hidden) {
      const [left, top, right, bottom] = outpaint;
      const width = number("width");
      const height = number("height");
      size.textContent = width !== null && height !== null
        ? `Width and height (${width} x ${height}) are the size of the extended image.`
        : canvas.width ? `Extended image: ${Math.max(8, canvas.width - (canvas.width % 8)) + left + right} x `
          + `${Math.max(8, canvas.height - (canvas.height % 8)) + top + bottom} pixels.` : "";
    }
  }

  // an opaque PNG at the init image's size: white where painted, black elsewhere, grey at soft
  // edges; null when nothing is painted
  function maskDataUrl() {
    if (!state.maskPainted) return null;
    const pixels = maskPixels();
    if (!pixels) return null;
    const out = new ImageData(pixels.width, pixels.height);
    for (let i = 0; i < pixels.data.length; i += 4) {
      const value = pixels.data[i + 3];
      out.data[i] = value;
      out.data[i + 1] = value;
      out.data[i + 2] = value;
      out.data[i + 3] = 255;
    }
    const offscreen = document.createElement("canvas");
    offscreen.width = pixels.width;
    offscreen.height = pixels.height;
    offscreen.getContext("2d").putImageData(out, 0, 0);
    return offscreen.toDataURL("image/png");
  }

  // each pixel's mask value (0-255) -> the overlay's pixels
  function setMaskValues(values) {
    const canvas = $("mask-canvas");
    const pixels = new ImageData(canvas.width, canvas.height);
    for (let p = 0; p < values.length; p++) {
      pixels.data.set(MASK_RGB, p * 4);
      pixels.data[p * 4 + 3] = values[p];
    }
    maskContext().putImageData(pixels, 0, 0);
  }

  function invertMask() {
    const pixels = maskPixels();
    if (!pixels) return;
    const values = new Uint8ClampedArray(pixels.width * pixels.height);
    for (let p = 0; p < values.length; p++) values[p] = 255 - pixels.data[p * 4 + 3];
    setMaskValues(values);
    maskChanged();
  }

  function clearMask() {
    const canvas = $("mask-canvas");
    maskContext().clearRect(0, 0, canvas.width, canvas.height);
    maskChanged();
  }

  // a mask image (a data URL) onto the canvas, read as the server reads one: the alpha of a
  // transparent image, else the luminance; white = repaint
  async function loadMask(dataUrl, invert = false) {
    const canvas = $("mask-canvas");
    if (!canvas.width) return;
    const image = new Image();
    image.src = dataUrl;
    try {
      await image.decode();
    } catch {
      return;
    }
    const scratch = document.createElement("canvas");
    scratch.width = canvas.width;
    scratch.height = canvas.height;
    const context = scratch.getContext("2d", { willReadFrequently: true });
    context.drawImage(image, 0, 0, scratch.width, scratch.height);
    const { data } = context.getImageData(0, 0, scratch.width, scratch.height);
    let transparent = false;
    for (let i = 3; i < data.length; i += 4) {
      if (data[i] < 255) { transparent = true; break; }
    }
    const values = new Uint8ClampedArray(scratch.width * scratch.height);
    for (let p = 0; p < values.length; p++) {
      const i = p * 4;
      const value = transparent ? data[i + 3]
        : Math.round(0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2]);
      values[p] = invert ? 255 - value : value;
    }
    setMaskValues(values);
    maskChanged();
  }

  // pointer position in the canvas's pixels, and how many of them one screen pixel is
  function maskPoint(event) {
    const canvas = $("mask-canvas");
    const box = canvas.getBoundingClientRect();
    const scale = canvas.width / box.width;
    const x = (event.clientX - box.left) * scale;
    return { x, y: (event.clientY - box.top) * (canvas.height / box.height), scale };
  }

  function paint(from, to) {
    const context = maskContext();
    const eraser = document.querySelector("input[name=mask-tool]:checked").value === "eraser";
    context.globalCompositeOperation = eraser ? "destination-out" : "source-over";
    context.fillStyle = context.strokeStyle = `rgb(${MASK_RGB.join(" ")})`;
    context.lineWidth = Number($("mask-size").value) * to.scale;
    context.lineCap = "round";
    context.lineJoin = "round";
    context.beginPath();
    if (from.x === to.x && from.y === to.y) {
      context.arc(to.x, to.y, context.lineWidth / 2, 0, 2 * Math.PI);
      context.fill();
    } else {
      context.moveTo(from.x, from.y);
      context.lineTo(to.x, to.y);
      context.stroke();
    }
    context.globalCompositeOperation = "source-over";
  }

  function wireMaskEditor() {
    const canvas = $("mask-canvas");
    canvas.addEventListener("pointerdown", (event) => {
      if ($("img2img").disabled || !canvas.width) return;
      if (event.pointerType === "mouse" && event.button !== 0) return;
      event.preventDefault();
      canvas.setPointerCapture(event.pointerId);
      state.stroke = maskPoint(event);
      paint(state.stroke, state.stroke);
    });
    canvas.addEventListener("pointermove", (event) => {
      if (!state.stroke) return;
      const moves = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
      for (const move of moves.length ? moves : [event]) {
        const point = maskPoint(move);
        paint(state.stroke, point);
        state.stroke = point;
      }
    });
    const end = () => {
      if (!state.stroke) return;
      state.stroke = null;
      maskChanged();
    };
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);
    $("mask-size").addEventListener("input", () => {
      $("mask-size-value").textContent = `${$("mask-size").value} px`;
    });
    $("mask-invert").addEventListener("click", invertMask);
    $("mask-clear").addEventListener("click", clearMask);
    for (const id of [...OUTPAINT_IDS, "width", "height"]) $(id).addEventListener("input", showInpaintFields);
    $("inpaint-area").addEventListener("change", showInpaintFields);
  }

  function dropZone(zoneId, inputId, onFile) {
    const zone = $(zoneId);
    zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      const file = event.dataTransfer.files[0];
      if (file) onFile(file);
    });
    $(inputId).addEventListener("change", (event) => {
      const file = event.target.files[0];
      if (file) onFile(file);
      event.target.value = "";
    });
  }

  async function sendToImg2img(url) {
    try {
      setInit(await urlToDataUrl(url));
      showTab("panel-generate");
      $("img2img").scrollIntoView({ block: "nearest" });
    } catch (error) {
      showError(error);
    }
  }

  // the image as init image with an empty mask, the mask editor in view to paint on
  async function sendToInpaint(url) {
    try {
      await setInit(await urlToDataUrl(url));
      showTab("panel-generate");
      $("mask-editor").scrollIntoView({ block: "center" });
      $("mask-canvas").focus({ preventScroll: true });
    } catch (error) {
      showError(error);
    }
  }

  // ---- ControlNet units ----------------------------------------------------------------------

  function addUnit(fields = {}) {
    const n = state.units++;
    const node = $("control-template").content.firstElementChild.cloneNode(true);
    node.id = `control-${n}`;
    for (const suffix of ["model", "remove", "file", "preprocessor", "mode", "low", "high", "scale", "start",
                          "end", "input", "preview", "error"]) {
      node.querySelector(`.control-${suffix}`).id = `control-${n}-${suffix}`;
    }
    $("control-units").append(node);
    const part = (suffix) => $(`control-${n}-${suffix}`);
    for (const model of state.control.models) part("model").add(new Option(model, model));
    for (const name of state.control.preprocessors) part("preprocessor").add(new Option(name, name));
    for (const name of state.control.modes || []) part("mode").add(new Option(name, name));
    const cannyModel = state.control.models.find((m) => m.includes("canny"));
    part("model").value = fields.model || cannyModel || state.control.models[0];
    part("preprocessor").value = fields.preprocessor || "canny";
    if (fields.conditioning_scale !== undefined) part("scale").value = fields.conditioning_scale;
    if (fields.guidance_start !== undefined) part("start").value = fields.guidance_start;
    if (fields.guidance_end !== undefined) part("end").value = fields.guidance_end;
    if (fields.mode !== undefined && fields.mode !== null) {  // a recorded index or name
      part("mode").value = typeof fields.mode === "number" ? (state.control.modes || [])[fields.mode] : fields.mode;
    }
    if (fields.canny_low !== undefined) part("low").value = fields.canny_low;
    if (fields.canny_high !== undefined) part("high").value = fields.canny_high;
    const cannyRow = node.querySelector(".canny");
    const refresh = () => {
      cannyRow.hidden = part("preprocessor").value !== "canny";
      previewUnit(node);
    };
    part("remove").addEventListener("click", () => node.remove());
    part("preprocessor").addEventListener("change", refresh);
    part("low").addEventListener("change", refresh);
    part("high").addEventListener("change", refresh);
    part("file").addEventListener("change", async (event) => {
      const file = event.target.files[0];
      event.target.value = "";
      if (!file) return;
      setUnitImage(node, await readFile(file));
    });
    node.addEventListener("dragover", (event) => event.preventDefault());
    node.addEventListener("drop", async (event) => {
      event.preventDefault();
      if (event.dataTransfer.files[0]) setUnitImage(node, await readFile(event.dataTransfer.files[0]));
    });
    cannyRow.hidden = part("preprocessor").value !== "canny";
    if (typeof fields.image === "string" && fields.image.startsWith("data:")) setUnitImage(node, fields.image);
    return node;
  }

  function setUnitImage(node, dataUrl) {
    node.dataset.image = dataUrl;
    const input = $(`${node.id}-input`);
    input.src = dataUrl;
    input.hidden = false;
    previewUnit(node);
  }

  async function previewUnit(node) {
    const part = (suffix) => $(`${node.id}-${suffix}`);
    showMessage(`${node.id}-error`, "");
    if (!node.dataset.image) return;
    const body = {
      image: node.dataset.image,
      preprocessor: part("preprocessor").value,
      canny_low: Number(part("low").value),
      canny_high: Number(part("high").value),
    };
    try {
      const preview = await api("/api/v1/control/preview", { body });
      part("preview").src = preview.image;
      part("preview").hidden = false;
    } catch (error) {
      part("preview").hidden = true;
      showMessage(`${node.id}-error`, error.message, "notice");
    }
  }

  // ---- LoRAs ---------------------------------------------------------------------------------

  const MAX_LORAS = 16;   // the server's limit per request
  const LORA_FAMILIES = ["sd15", "sdxl"];   // model families that take LoRAs (when /models/info does not say)
  const loraRowNodes = () => [...document.querySelectorAll("#lora-rows .lora-row")];

  // whether the selected model's family takes LoRAs (unknown model: let the server decide)
  function lorasAvailable() {
    const info = state.info;
    if (!info) return true;
    if (typeof info.loras === "boolean") return info.loras;
    return LORA_FAMILIES.includes(info.family);
  }

  // why a LoRA does not fit the selected model ("" when it fits or the page cannot tell: the server
  // checks). A LoRA's family comes from the width of its cross-attention layers: "sd15", "sd2",
  // "sdxl", or "cross-attention N" for other widths, which only the model's UNet can judge.
  // SD 2 models are of the sd15 family here, so sd2 LoRAs are not marked for sd15 models.
  function loraMismatch(name) {
    const entry = state.loras.find((lora) => lora.name === name);
    const model = state.info && state.info.family;
    if (!entry || !["sd15", "sd2", "sdxl"].includes(entry.family) || !LORA_FAMILIES.includes(model)) return "";
    const fits = model === "sd15" ? ["sd15", "sd2"] : [model];
    return fits.includes(entry.family) ? "" : `made for ${entry.family}, not for this ${model} model`;
  }

  async function loadLoras() {
    showMessage("lora-message", "", "notice");
    let loras;
    try {
      loras = await api("/api/v1/loras");
    } catch (error) {
      showMessage("lora-message", `Could not list the server's LoRAs: ${error.message}`, "error");
      return;
    }
    state.loras = loras;
    const select = $("lora-select");
    const chosen = select.value;
    select.replaceChildren(...loras.map((lora) => {
      const option = new Option(lora.name, lora.name);
      if (lora.sha256) option.title = `sha256 ${lora.sha256}`;
      return option;
    }));
    if (loras.some((lora) => lora.name === chosen)) select.value = chosen;
    $("lora-pick").hidden = !loras.length;
    $("lora-empty").hidden = loras.length > 0;
    showLoraFit();
  }

  // option labels and row notes for the selected model (marks LoRAs made for another family)
  function showLoraFit() {
    for (const option of $("lora-select").options) {
      const entry = state.loras.find((lora) => lora.name === option.value) || {};
      const mismatch = loraMismatch(option.value);
      option.textContent = `${option.value} (${mismatch || entry.family || "family unknown"})`;
      option.classList.toggle("mismatch", Boolean(mismatch));
    }
    for (const row of loraRowNodes()) {
      const mismatch = loraMismatch(row.dataset.name);
      const note = $(`${row.id}-note`);
      note.textContent = mismatch ? `(${mismatch})` : "";
      row.classList.toggle("mismatch", Boolean(mismatch));
    }
  }

  function showLoraFields() {
    const available = lorasAvailable();
    $("loras").disabled = !available;
    $("loras").classList.toggle("unavailable", !available);
    $("lora-unavailable").hidden = available;
    showLoraFit();
  }

  // a row for LoRA `name` (once per request: a second Add of the same name selects its weight)
  function addLora(name, weight) {
    name = String(name || "").trim();
    if (!name) return null;
    showMessage("lora-message", "", "notice");
    const existing = loraRowNodes().find((row) => row.dataset.name === name);
    if (existing) {
      showMessage("lora-message", `${name} is already added: change its weight instead.`, "notice");
      $(`${existing.id}-weight`).focus();
      return existing;
    }
    if (loraRowNodes().length >= MAX_LORAS) {
      showMessage("lora-message", `At most ${MAX_LORAS} LoRAs per image.`, "notice");
      return null;
    }
    const n = state.loraRows++;
    const row = $("lora-template").content.firstElementChild.cloneNode(true);
    row.id = `lora-${n}`;
    row.dataset.name = name;
    for (const suffix of ["name", "weight", "remove"]) row.querySelector(`.lora-${suffix}`).id = `lora-${n}-${suffix}`;
    $("lora-rows").append(row);
    const label = $(`lora-${n}-name`);
    label.textContent = name;
    const note = document.createElement("span");
    note.id = `lora-${n}-note`;
    note.className = "muted lora-note";
    label.after(note);
    const input = $(`lora-${n}-weight`);
    input.setAttribute("aria-label", `Weight of ${name}`);
    if (weight !== undefined && weight !== null && weight !== "") input.value = weight;
    $(`lora-${n}-remove`).addEventListener("click", () => {
      row.remove();
      showMessage("lora-message", "", "notice");
    });
    showLoraFit();
    return row;
  }

  function loraRequest() {
    if (!lorasAvailable()) return [];   // the fieldset says this family takes none
    return loraRowNodes().map((row) => {
      const value = $(`${row.id}-weight`).value.trim();
      return { name: row.dataset.name, weight: value === "" ? 1 : Number(value) };
    });
  }

  // `loras[i].name` / `loras[i].weight`: that row's part; a LoRA from a <lora:...> tag has no row
  function loraElement(field) {
    const match = /^loras\[(\d+)\]\.?(\w*)/.exec(field);
    const row = loraRowNodes()[Number(match[1])];
    if (!row) return $("syntax").value === "a1111" && $("prompt").value.includes("<lora:") ? $("prompt") : $("loras");
    if (match[2] === "weight") return $(`${row.id}-weight`);
    if (match[2] === "name") return $(`${row.id}-name`);
    return row;
  }

  // A1111 syntax: <lora:name:1> written into the prompt at the cursor (the server reads it)
  function insertLoraTag() {
    const name = $("lora-select").value;
    if (!name) return;
    const prompt = $("prompt");
    const start = prompt.selectionStart ?? prompt.value.length;
    const end = prompt.selectionEnd ?? start;
    const before = prompt.value.slice(0, start);
    const tag = `${before && !/\s$/.test(before) ? " " : ""}<lora:${name}:1>`;
    prompt.focus();
    prompt.setRangeText(tag, start, end, "end");
    prompt.dispatchEvent(new Event("input", { bubbles: true }));
  }

  function showLoraInsert() {
    $("lora-insert").hidden = $("syntax").value !== "a1111";
  }

  // ---- generating ----------------------------------------------------------------------------

  function setBusy(busy) {
    $("generate").disabled = busy;
    $("cancel").disabled = !busy;
  }

  async function generate() {
    clearInvalid();
    const request = buildRequest();
    setBusy(true);
    // data-state always names what the text says: a finished job's "failed" must not linger
    // while the next one is being submitted (tests and scripts wait on it)
    $("status").textContent = "Submitting…";
    $("status").dataset.state = "submitting";
    let job;
    try {
      job = await api("/api/v1/jobs", { body: request });
    } catch (error) {
      setBusy(false);
      $("status").textContent = "";
      $("status").dataset.state = "refused";
      showError(error);
      return;
    }
    state.sent.set(job.id, request);
    watch(job);
  }

  function watch(job) {
    state.job = job;
    $("progress").value = 0;
    showProgress({ status: job.status, step: 0, total: 0, position: null });
    const events = new EventSource(`/api/v1/jobs/${job.id}/events`);
    state.events = events;
    events.addEventListener("progress", (event) => showProgress(JSON.parse(event.data)));
    events.addEventListener("end", (event) => {
      events.close();
      finish(JSON.parse(event.data));
    });
    events.onerror = () => {   // lost the stream (proxy, restart): ask for the record instead
      if (events.readyState === EventSource.CLOSED || state.job !== job) return;
      events.close();
      poll(job.id);
    };
  }

  async function poll(jobId) {
    while (state.job && state.job.id === jobId) {
      try {
        const record = await api(`/api/v1/jobs/${jobId}`);
        if (["succeeded", "failed", "cancelled"].includes(record.status)) { finish(record); return; }
        showProgress({ status: record.status, step: record.progress.step, total: record.progress.total });
      } catch (error) {
        showError(error);
        setBusy(false);
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  }

  function showProgress(progress) {
    const status = $("status");
    if (progress.status === "queued") {
      status.textContent = progress.position ? `Queued: position ${progress.position}` : "Queued";
      status.dataset.state = "queued";
    } else if (progress.status === "running") {
      status.textContent = progress.total ? `Step ${progress.step}/${progress.total}` : "Loading the model…";
      status.dataset.state = "running";
      $("progress").max = progress.total || 1;
      $("progress").value = progress.step;
    }
    if (progress.preview) showPreview(progress.preview, progress.preview_step, progress.total);
  }

  // The latest live preview (sent only when a new one exists) in the results area while the job
  // runs; the final images replace it, and a failed or cancelled run puts the earlier results back.
  function showPreview(url, step, total) {
    const results = $("results");
    let figure = $("live-preview");
    if (!figure) {
      figure = document.createElement("figure");
      figure.id = "live-preview";
      const img = document.createElement("img");
      img.alt = "preview of the image being made";
      const caption = document.createElement("figcaption");
      figure.append(img, caption);
      results.prepend(figure);
      results.classList.add("previewing");
    }
    figure.querySelector("img").src = url;
    figure.querySelector("figcaption").textContent = `preview · step ${step}/${total}`;
  }

  function hidePreview() {
    const figure = $("live-preview");
    if (figure) figure.remove();
    $("results").classList.remove("previewing");
  }

  function finish(record) {
    state.job = null;
    state.events = null;
    setBusy(false);
    hidePreview();
    const status = $("status");
    status.dataset.state = record.status;
    if (record.status === "succeeded") {
      $("progress").value = $("progress").max;
      const seconds = record.result && record.result.timings ? record.result.timings.total_s : null;
      status.textContent = `Done: ${record.images.length} image${record.images.length === 1 ? "" : "s"}`
        + (typeof seconds === "number" ? ` in ${seconds.toFixed(1)} s` : "");
      if (record.images.length) state.lastSeed = record.images[0].seed;
      const warnings = (record.result && record.result.warnings) || [];
      showMessage("notice", warnings.join("\n"), "notice");
      showResults(record);
    } else {
      status.textContent = record.status === "cancelled" ? "Cancelled" : "Failed";
      const problem = record.error || {};
      showError(new ApiError(problem.message || record.status, problem.field, 0, problem.type));
    }
  }

  async function cancel() {
    if (!state.job) return;
    try {
      await api(`/api/v1/jobs/${state.job.id}/cancel`, { method: "POST" });
      $("status").textContent = "Cancelling…";
    } catch (error) {
      showError(error);
    }
  }

  // ---- results and gallery cards -------------------------------------------------------------

  function card(image, request, options) {
    const node = document.createElement("figure");
    node.className = options.className;
    node.dataset.imageId = image.id;
    const img = document.createElement("img");
    img.src = image.url;
    img.alt = request.prompt || "image";
    img.className = `${options.className}-image`;
    img.loading = "lazy";
    const caption = document.createElement("figcaption");
    const title = document.createElement("span");
    title.textContent = `seed ${image.seed}` + (options.label ? ` · ${options.label}` : "");
    caption.append(title);
    if (image.parameters) {
      const details = document.createElement("details");
      details.className = "metadata";
      const summary = document.createElement("summary");
      summary.textContent = "parameters";
      const pre = document.createElement("pre");
      pre.textContent = image.parameters;
      details.append(summary, pre);
      caption.append(details);
    }
    const buttons = document.createElement("div");
    buttons.className = "row buttons";
    const download = document.createElement("a");
    download.href = image.url;
    download.download = `easel-${image.id}.png`;
    download.textContent = "Download";
    download.className = "download";
    buttons.append(download);
    for (const [className, label, action] of options.actions) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = className;
      button.textContent = label;
      button.addEventListener("click", action);
      buttons.append(button);
    }
    caption.append(buttons);
    node.append(img, caption);
    return node;
  }

  function reuse(request, seed) {
    fillForm({ ...request, seed, num_images: 1 }).then(() => showTab("panel-generate"));
  }

  function showResults(record) {
    const sent = state.sent.get(record.id) || record.request;
    const grid = $("results");
    grid.replaceChildren();
    for (const image of record.images) {
      grid.append(card(image, sent, {
        className: "result",
        label: image.nsfw ? "flagged by the safety checker" : "",
        actions: [
          ["send-img2img", "Send to img2img", () => sendToImg2img(image.url)],
          ["send-inpaint", "Send to inpaint", () => sendToInpaint(image.url)],
          ["reuse-settings", "Reuse settings", () => reuse(sent, image.seed)],
          ["upscale", "Upscale ×2", () => upscaleImage(image.url)],
          ["new-seed", "Same settings, new seed", async () => {
            await fillForm({ ...sent, seed: null });
            generate();
          }],
        ],
      }));
    }
  }

  async function loadGallery() {
    const search = $("gallery-search").value.trim();
    showMessage("gallery-error", "");
    let entries;
    try {
      entries = await api(`/api/v1/gallery?limit=100${search ? `&search=${encodeURIComponent(search)}` : ""}`);
    } catch (error) {
      showError(error, "gallery-error");
      return;
    }
    const grid = $("gallery-grid");
    grid.replaceChildren();
    if (!entries.length) {
      showMessage("gallery-error", search ? `No image matches “${search}”.` : "The gallery is empty.", "notice");
    }
    for (const entry of entries) {
      const image = { id: entry.id, url: entry.url, seed: entry.seed };
      const node = card(image, entry.request || {}, {
        className: "gallery-item",
        label: `${entry.created_at.slice(0, 16).replace("T", " ")} · ${entry.prompt}`,
        actions: [
          ["send-img2img", "Send to img2img", () => sendToImg2img(entry.url)],
          ["send-inpaint", "Send to inpaint", () => sendToInpaint(entry.url)],
          ["reuse-settings", "Reuse settings", () => reuse(entry.request || {}, entry.seed)],
          ["upscale", "Upscale ×2", () => upscaleImage(entry.url)],
          ["gallery-delete", "Delete", async () => {
            try {
              await api(`/api/v1/images/${entry.id}`, { method: "DELETE" });
              node.remove();
            } catch (error) {
              showError(error, "gallery-error");
            }
          }],
        ],
      });
      grid.append(node);
    }
  }

  // ---- upscaling -----------------------------------------------------------------------------

  async function loadUpscalers() {
    const names = await api("/api/v1/upscalers");
    $("upscaler").replaceChildren(...names.map((name) => new Option(name, name)));
    $("upscaler").value = names.includes("Lanczos") ? "Lanczos" : names[0];
  }

  // POST /api/v1/upscale with the chosen upscaler; the result (its text kept, plus A1111's
  // postprocessing line) is shown under the results with a download link
  async function upscaleImage(url) {
    showMessage("upscale-error", "");
    showTab("panel-generate");
    $("status").textContent = `Upscaling ×2 with ${$("upscaler").value}…`;
    try {
      const done = await api("/api/v1/upscale", {
        body: { image: await urlToDataUrl(url), scale: 2, upscaler: $("upscaler").value },
      });
      const node = document.createElement("figure");
      node.className = "upscaled";
      const img = document.createElement("img");
      img.src = done.image;
      img.alt = done.postprocessing;
      const caption = document.createElement("figcaption");
      const title = document.createElement("span");
      title.textContent = `${done.width}×${done.height} · ${done.postprocessing}`;
      const download = document.createElement("a");
      download.href = done.image;
      download.download = `easel-upscaled-${done.width}x${done.height}.png`;
      download.textContent = "Download";
      download.className = "download";
      caption.append(title, download);
      node.append(img, caption);
      $("upscaled").prepend(node);
      $("status").textContent = `Upscaled to ${done.width}×${done.height}.`;
      node.scrollIntoView({ block: "nearest" });
    } catch (error) {
      $("status").textContent = "";
      showError(error, "upscale-error");
    }
  }

  // ---- PNG info ------------------------------------------------------------------------------

  async function readPng(file) {
    showMessage("pnginfo-error", "");
    $("pnginfo-load").disabled = true;
    state.pngFields = null;
    const dataUrl = await readFile(file);
    $("pnginfo-preview").src = dataUrl;
    $("pnginfo-preview").hidden = false;
    let info;
    try {
      info = await api("/api/v1/png-info", { body: { image: dataUrl } });
    } catch (error) {
      $("pnginfo-parameters").textContent = "";
      showError(error, "pnginfo-error");
      return;
    }
    $("pnginfo-parameters").textContent = info.parameters || "";
    if (!info.parameters && !info.easel) {
      showMessage("pnginfo-error", "This image carries no generation parameters.", "notice");
      return;
    }
    state.pngFields = info.request;
    $("pnginfo-load").disabled = false;
  }

  // ---- tabs and wiring -----------------------------------------------------------------------

  function showTab(panelId) {
    for (const tab of document.querySelectorAll(".tab")) {
      tab.classList.toggle("active", tab.dataset.panel === panelId);
      $(tab.dataset.panel).hidden = tab.dataset.panel !== panelId;
    }
    if (panelId === "panel-gallery") loadGallery();
  }

  async function main() {
    for (const tab of document.querySelectorAll(".tab")) {
      tab.addEventListener("click", () => showTab(tab.dataset.panel));
    }
    $("form").addEventListener("submit", (event) => { event.preventDefault(); generate(); });
    $("cancel").addEventListener("click", cancel);
    $("seed-random").addEventListener("click", () => { $("seed").value = -1; });
    $("seed-reuse").addEventListener("click", () => {
      if (state.lastSeed !== null) $("seed").value = state.lastSeed;
    });
    $("model").addEventListener("change", modelChanged);
    $("syntax").addEventListener("change", () => {
      showLoraInsert();
      countTokens("prompt", "prompt-tokens");
      countTokens("negative", "negative-tokens");
    });
    $("prompt").addEventListener("input", () => debounce("prompt", () => countTokens("prompt", "prompt-tokens")));
    $("negative").addEventListener("input", () => debounce("negative", () => countTokens("negative", "negative-tokens")));
    $("steps").addEventListener("input", showEffectiveSteps);
    $("strength").addEventListener("input", showEffectiveSteps);
    $("init-clear").addEventListener("click", () => setInit(null));
    $("reference-files").addEventListener("change", async (event) => {
      setReferences(await Promise.all([...event.target.files].map(readFile)));
    });
    $("reference-clear").addEventListener("click", () => setReferences([]));
    dropZone("init-drop", "init-file", async (file) => setInit(await readFile(file)));
    wireMaskEditor();
    maskChanged();
    dropZone("pnginfo-drop", "pnginfo-file", readPng);
    $("pnginfo-load").addEventListener("click", async () => {
      if (!state.pngFields) return;
      await fillForm(state.pngFields);
      showTab("panel-generate");
    });
    $("control-add").addEventListener("click", () => addUnit());
    $("lora-add").addEventListener("click", () => addLora($("lora-select").value));
    $("lora-insert").addEventListener("click", insertLoraTag);
    $("lora-refresh").addEventListener("click", loadLoras);
    $("lora-empty-refresh").addEventListener("click", loadLoras);
    $("gallery-refresh").addEventListener("click", loadGallery);
    $("gallery-search").addEventListener("input", () => debounce("gallery", loadGallery, 300));
    try {
      await loadOptions();
      await loadLoras();
      await loadUpscalers();
      await loadHiresUpscalers();
      await modelChanged();
      document.body.dataset.ready = "true";   // tests wait for this
    } catch (error) {
      showError(error);
      document.body.dataset.ready = "error";
    }
  }

  document.addEventListener("DOMContentLoaded", main);
})();
