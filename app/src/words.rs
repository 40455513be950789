//! Small pieces of wording shared by the command line and the app.

/// A count with its noun, singular for one: "1 image", "3 images".
pub fn count_noun(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::count_noun;

    #[test]
    fn one_is_singular_and_every_other_count_plural() {
        assert_eq!(count_noun(1, "step"), "1 step");
        assert_eq!(count_noun(0, "image"), "0 images");
        assert_eq!(count_noun(16, "gallery image"), "16 gallery images");
    }
}
