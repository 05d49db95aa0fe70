// Personalization Guidance: LoRA picker for the "Personalization LoRAs" field.
//
// Under the field, one chip per LoRA in the tab's positive prompt; a click adds the name to the field's
// comma-separated list or takes it out. The textbox stays the only value the script receives (API, infotext
// and paste are unchanged) and typing in it still works: the chips only help fill it.
//
// The WebUI (A1111, gradio 3.41; the forks, gradio 4) runs every javascript/*.js of an extension as a classic
// script in the page, so everything lives in one global object. Node loads the same file for the unit tests
// (tests/unit/test_lora_picker_js.py): the pure functions are exported and nothing touches the DOM there.
var pgLoraPicker = (function() {
    "use strict";

    // The WebUI's own extra-network syntax (modules/extra_networks.py: `<(\w+):([^>]+)>`, arguments split on
    // ':'), so a tag is found exactly where the WebUI finds it: inside (( )), [ : ] schedules, AND and BREAK.
    // The first argument is the name the Lora extension looks up; A1111 also reads `lyco` as `lora`.
    var TAG = /<(\w+):([^>]+)>/g;
    var KINDS = {lora: true, lyco: true};

    // Prompt text -> LoRA names in order of first appearance, de-duplicated without regard to case (PG matches
    // names case-insensitively: pg_ext/lora_networks.py). A name with a comma is left out: the field is a
    // comma-separated list, so it could not hold it.
    function loraNames(prompt) {
        var names = [], seen = {}, match;
        TAG.lastIndex = 0;
        while ((match = TAG.exec(prompt || "")) !== null) {
            if (!KINDS[match[1]]) continue;
            var name = match[2].split(":")[0].trim();
            var key = name.toLowerCase();
            if (!name || name.indexOf(",") >= 0 || seen[key]) continue;
            seen[key] = true;
            names.push(name);
        }
        return names;
    }

    // The field's text -> names, as pg_ext/config.py:parse_name_list reads it (a JSON list from an API client
    // or a comma-separated list; blanks and repeats dropped).
    function parseList(text) {
        text = (text || "").trim();
        var items = null;
        if (text.charAt(0) === "[") {
            try { items = JSON.parse(text); } catch (e) { items = null; }
            if (!Array.isArray(items)) items = null;
        }
        if (items === null) items = text.split(",");
        var out = [], seen = {};
        items.forEach(function(item) {
            var name = String(item).trim(), key = name.toLowerCase();
            if (name && !seen[key]) { seen[key] = true; out.push(name); }
        });
        return out;
    }

    function hasName(text, name) {
        var key = name.toLowerCase();
        return parseList(text).some(function(n) { return n.toLowerCase() === key; });
    }

    // Field text with `name` added at the end, or removed (any spelling of it) when it is already there.
    function toggleName(text, name) {
        var names = parseList(text), key = name.toLowerCase();
        var kept = names.filter(function(n) { return n.toLowerCase() !== key; });
        if (kept.length === names.length) kept.push(name);
        return kept.join(", ");
    }

    // Only the positive prompt: LoRAs in the negative prompt are never the subject PG should steer toward.
    function promptSelector(tab) { return "#" + tab + "_prompt textarea"; }
    function fieldId(tab) { return "script_" + tab + "_personalization_guidance_loras"; }

    var api = {loraNames: loraNames, parseList: parseList, hasName: hasName, toggleName: toggleName,
               promptSelector: promptSelector, fieldId: fieldId};
    if (typeof module !== "undefined" && module.exports) module.exports = api;
    if (typeof document === "undefined") return api;  // node: the pure functions only

    // ---- the page ----------------------------------------------------------------------------------------

    var TABS = ["txt2img", "img2img"];
    var attached = {};

    function app() { return typeof gradioApp === "function" ? gradioApp() : document; }

    // Gradio (3 and 4) takes a textbox's value from its input event, not from .value; the WebUI's own
    // updateInput does exactly this, with a fallback where a fork lacks it.
    function setValue(input, text) {
        input.value = text;
        if (typeof updateInput === "function") updateInput(input);
        else input.dispatchEvent(new Event("input", {bubbles: true}));
    }

    function addStyle() {
        if (document.getElementById("pg-lora-picker-style")) return;
        var style = document.createElement("style");
        style.id = "pg-lora-picker-style";
        // gradio's theme variables, so the chips follow the light and dark themes of both gradio versions
        style.textContent =
            ".pg-lora-picker{display:flex;flex-wrap:wrap;gap:6px;align-items:center;margin-top:6px}" +
            ".pg-lora-picker[hidden]{display:none}" +
            ".pg-lora-picker>span{font-size:var(--text-sm);color:var(--body-text-color-subdued)}" +
            ".pg-lora-chip{font-size:var(--text-sm);padding:2px 10px;border-radius:999px;cursor:pointer;" +
            "border:1px solid var(--border-color-primary);background:var(--button-secondary-background-fill);" +
            "color:var(--button-secondary-text-color,var(--body-text-color))}" +
            ".pg-lora-chip[aria-pressed=true]{background:var(--button-primary-background-fill);" +
            "color:var(--button-primary-text-color);border-color:var(--button-primary-border-color,transparent)}";
        document.head.appendChild(style);
    }

    function attach(tab) {
        var root = app();
        var prompt = root.querySelector(promptSelector(tab));
        var block = root.querySelector("#" + fieldId(tab));
        var field = block && block.querySelector("textarea, input");
        if (!prompt || !field) return false;  // not rendered yet: onUiUpdate tries again

        addStyle();
        var box = document.createElement("div");
        box.className = "pg-lora-picker";
        box.id = fieldId(tab) + "_picker";
        box.hidden = true;
        block.appendChild(box);

        var shownNames = null, shownField = null;
        function render() {
            var names = loraNames(prompt.value);
            if (shownNames === names.join("\n") && shownField === field.value) return;  // nothing changed
            shownNames = names.join("\n");
            shownField = field.value;
            box.textContent = "";
            box.hidden = names.length === 0;
            if (!names.length) return;
            var caption = document.createElement("span");
            caption.textContent = "In the prompt:";
            box.appendChild(caption);
            names.forEach(function(name) {
                var chip = document.createElement("button");
                chip.type = "button";
                chip.className = "pg-lora-chip";
                chip.textContent = name;
                chip.dataset.name = name;
                chip.setAttribute("aria-pressed", String(hasName(field.value, name)));
                chip.title = "Add to / remove from Personalization LoRAs";
                chip.addEventListener("click", function() {
                    setValue(field, toggleName(field.value, name));
                    render();
                });
                box.appendChild(chip);
            });
        }
        // Typing in the prompt or the field updates at once. Gradio also sets the prompt's value without an
        // event (paste of generation parameters, "Send to", styles), so a cheap once-a-second comparison
        // catches those too.
        prompt.addEventListener("input", render);
        field.addEventListener("input", render);
        setInterval(render, 1000);
        render();
        return true;
    }

    function attachAll() {
        TABS.forEach(function(tab) { if (!attached[tab]) attached[tab] = attach(tab); });
    }
    // onUiUpdate (every DOM change) rather than onUiLoaded alone: a fork may render the accordion's content
    // later; once both tabs are attached each call is two property reads.
    if (typeof onUiUpdate === "function") onUiUpdate(attachAll);
    if (typeof onUiLoaded === "function") onUiLoaded(attachAll);
    return api;
})();
