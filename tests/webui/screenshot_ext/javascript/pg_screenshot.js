// Screenshot helper (tests only): with ?pgshot=accordion opens the txt2img PG accordion and scrolls to it;
// with ?pgshot=settings opens Settings -> Personalization Guidance. Headless Chromium cannot click, so
// the page does it on load; nothing happens without the query parameter.
onUiLoaded(function() {
    var mode = new URLSearchParams(window.location.search).get("pgshot");
    if (!mode) return;
    function clickText(selector, text) {
        var found = Array.from(gradioApp().querySelectorAll(selector)).find(function(b) { return b.textContent.trim() === text; });
        if (found) found.click();
        return found;
    }
    setTimeout(function() {
        if (mode === "accordion") {
            var acc = gradioApp().getElementById("script_txt2img_personalization_guidance_enabled");
            if (!acc) return;
            var label = acc.querySelector(".label-wrap");
            if (label && !label.classList.contains("open")) label.click();
            setTimeout(function() { acc.scrollIntoView({block: "start"}); window.scrollBy(0, -8); }, 500);
        } else if (mode === "settings") {
            clickText("#tabs > .tab-nav button", "Settings");
            setTimeout(function() {
                clickText("#settings .tab-nav button", "Personalization Guidance");
                window.scrollTo(0, 0);
            }, 500);
        }
    }, 1000);
});
