//! How the Train view names and colours the metrics of a run: words instead of the
//! `metrics.jsonl` keys, and one colour per metric that does not change when another curve
//! appears.

use egui::Color32;

/// The words for a metric key (`grad_norm` -> "gradient norm"); unknown keys get their
/// underscores replaced.
pub fn metric_label(name: &str) -> String {
    let known = match name {
        "loss" => "loss",
        "mse" => "MSE",
        "grad_norm" => "gradient norm",
        "codebook_utilisation" => "codebook use",
        "perplexity" => "code perplexity",
        "restarted_codes" => "restarted codes",
        "images_per_sec" => "images/s",
        "heldout_psnr" => "held-out PSNR (dB)",
        "heldout_psnr_ema" => "held-out PSNR, EMA weights (dB)",
        "heldout_perplexity" => "held-out perplexity",
        "heldout_perplexity_ema" => "held-out perplexity, EMA",
        "heldout_proxy_accuracy" => "held-out proxy accuracy",
        "heldout_proxy_accuracy_ema" => "held-out proxy accuracy, EMA",
        "proxy_accuracy" => "proxy accuracy",
        _ => "",
    };
    if !known.is_empty() {
        return known.to_string();
    }
    name.replace("heldout_", "held-out ")
        .replace("_1step", " (1 step)")
        .replace("_ema", ", EMA")
        .replace('_', " ")
}

/// A colour fixed by the metric's name (a hash into a palette that reads on dark and light
/// backgrounds), so that a curve keeps its colour when others appear or disappear.
pub fn metric_colour(name: &str) -> Color32 {
    const PALETTE: [Color32; 10] = crate::gui::palette::CATEGORY;
    if name == "loss" {
        return PALETTE[0];
    }
    // FNV-1a: stable across runs and platforms (std's hasher is seeded per process).
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    PALETTE[1 + (hash % (PALETTE.len() as u64 - 1)) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_words() {
        assert_eq!(metric_label("grad_norm"), "gradient norm");
        assert_eq!(metric_label("codebook_utilisation"), "codebook use");
        assert_eq!(
            metric_label("heldout_psnr_ema"),
            "held-out PSNR, EMA weights (dB)"
        );
        assert_eq!(metric_label("lpips_loss"), "lpips loss");
        assert_eq!(
            metric_label("heldout_proxy_accuracy_1step_ema"),
            "held-out proxy accuracy (1 step), EMA"
        );
        assert!(!metric_label("some_new_metric").contains('_'));
    }

    #[test]
    fn a_curve_keeps_its_colour_whatever_else_is_drawn() {
        // The colour depends on the name alone, not on the order or the set of curves.
        let names = [
            "loss",
            "mse",
            "commitment_loss",
            "codebook_loss",
            "gan_loss",
        ];
        let first: Vec<Color32> = names.iter().map(|n| metric_colour(n)).collect();
        let again: Vec<Color32> = names.iter().rev().map(|n| metric_colour(n)).collect();
        assert_eq!(first, again.into_iter().rev().collect::<Vec<_>>());
        assert_eq!(metric_colour("loss"), metric_colour("loss"));
        assert_ne!(metric_colour("loss"), metric_colour("mse"));
    }
}
