// Screenshot helper (tests only): with ?pgshot=accordion opens the txt2img PG accordion and scrolls to it;
// with ?pgshot=settings opens Settings -> Personalization Guidance. Headless Chromium cannot click, so
// the page does it itself, polling until the UI is there; nothing happens without the query parameter.
(function() {
    var mode = new URLSearchParams(window.location.search).get("pgshot");
    if (!mode) return;
    function app() { return typeof gradioApp === "function" ? gradioApp() : document; }
    function byText(selector, text) {
        return Array.from(app().querySelectorAll(selector)).find(function(b) { return b.textContent.trim() === text; });
    }
    var stage = 0;
    var timer = setInterval(function() {
        if (mode === "accordion") {
            var acc = app().querySelector("#script_txt2img_personalization_guidance_enabled");
            if (!acc) return;
            var label = acc.querySelector(".label-wrap");
            if (stage === 0 && label) { label.click(); stage = 1; return; }
            if (stage >= 1) { acc.scrollIntoView({block: "start"}); window.scrollBy(0, -10); if (++stage > 4) clearInterval(timer); }
        } else if (mode === "settings") {
            var tab = byText("#tabs > .tab-nav button, #tabs button", "Settings");
            if (stage === 0) { if (tab) { tab.click(); stage = 1; } return; }
            var sec = byText("#settings button, #settings .tab-nav button", "Personalization Guidance");
            if (stage === 1 && sec) { sec.click(); stage = 2; return; }
            if (stage >= 2) { window.scrollTo(0, 0); if (++stage > 4) clearInterval(timer); }
        }
    }, 500);
})();
