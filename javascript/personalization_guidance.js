// Hover hints for the Personalization Guidance accordion (keys are the visible labels).
(function () {
    var hints = {
        "Personalization Guidance": "CFG's unconditional branch comes from a weak model between the base and your personalized model (Park et al., ICCV 2025).",
        "ω (weak model strength)": "1 = plain CFG. Lower = closer to your subject: 0.4-0.6 balances subject and prompt, 0-0.3 for most subject fidelity.",
        "Personalization LoRAs": "Comma-separated names of the LoRAs in the prompt that carry your subject. Empty = every LoRA in the prompt. Others keep full strength.",
        "Weak branch prompt": "negative: the weak model sees your negative prompt (ω = 1 is exactly your usual CFG). empty: the paper's null prompt.",
        "Start at": "Fraction of sampling steps before which PG is off (plain CFG).",
        "End at": "Fraction of sampling steps after which PG is off (plain CFG).",
        "Also in the hires. fix pass": "Run PG in the second pass of hires. fix too.",
        "Base checkpoint (DreamBooth)": "For a DreamBooth checkpoint: the checkpoint it was trained from. The weak model interpolates between the two.",
        "Base checkpoint mode": "exact: one extra UNet of memory, exact. low-memory: a low-rank approximation of the difference (about 12% of a UNet)."
    };
    if (typeof titles === "undefined") {
        window.titles = {};
    }
    Object.assign(titles, hints);
})();
