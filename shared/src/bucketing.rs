//! Campaign assignment, bit-compatible with GrowthBook's SDKs: the same member, seed and
//! weights land in the same variation here as in any GrowthBook SDK, so a brand can check an
//! assignment with its own tools.
//!
//! This is the one place that uses floating point, because GrowthBook defines its buckets in
//! JavaScript numbers (f64); it decides who is in which variation and never touches points or
//! money.

/// FNV-1a, 32 bits, over UTF-16 code units (JavaScript's `charCodeAt`).
pub fn fnv32a(text: &str) -> u32 {
    text.encode_utf16().fold(0x811c_9dc5_u32, |hash, unit| {
        (hash ^ u32::from(unit)).wrapping_mul(0x0100_0193)
    })
}

/// GrowthBook's `hash(seed, value, version)`: a number in [0, 1), or `None` for a version it
/// does not know. Version 1 is the original (biased) hash; version 2 the unbiased one.
pub fn hash(seed: &str, value: &str, version: u32) -> Option<f64> {
    match version {
        1 => Some(f64::from(fnv32a(&format!("{value}{seed}")) % 1000) / 1000.0),
        2 => {
            let first = fnv32a(&format!("{seed}{value}"));
            Some(f64::from(fnv32a(&first.to_string()) % 10000) / 10000.0)
        }
        _ => None,
    }
}

/// `getEqualWeights(n)`.
pub fn equal_weights(variations: i64) -> Vec<f64> {
    match usize::try_from(variations) {
        Ok(n) if n > 0 => vec![1.0 / n as f64; n],
        _ => Vec::new(),
    }
}

/// `getBucketRanges(numVariations, coverage, weights)`: each variation's [start, end) in
/// [0, 1]. Coverage is clamped to [0, 1]; weights that are missing, of the wrong length, or
/// that do not sum to 1 within 0.01 are replaced by equal weights.
pub fn bucket_ranges(variations: i64, coverage: f64, weights: Option<&[f64]>) -> Vec<(f64, f64)> {
    let coverage = coverage.clamp(0.0, 1.0);
    let equal = equal_weights(variations);
    let mut weights = match weights {
        Some(w) if w.len() == equal.len() => w.to_vec(),
        _ => equal.clone(),
    };
    let total: f64 = weights.iter().sum();
    if !(0.99..=1.01).contains(&total) {
        weights = equal;
    }
    let mut cumulative = 0.0;
    weights
        .iter()
        .map(|w| {
            let start = cumulative;
            cumulative += w;
            (start, start + coverage * w)
        })
        .collect()
}

/// `chooseVariation(n, ranges)`: the variation whose range holds `n`, or `None`.
pub fn choose_variation(n: f64, ranges: &[(f64, f64)]) -> Option<usize> {
    ranges
        .iter()
        .position(|(start, end)| n >= *start && n < *end)
}

/// A namespace: campaigns that share one keep their members apart by range.
#[derive(Debug, Clone, PartialEq)]
pub struct Namespace {
    pub name: String,
    pub start: f64,
    pub end: f64,
}

/// `inNamespace(hashValue, namespace)`: hashed with seed `"__" + name`, version 1.
pub fn in_namespace(id: &str, namespace: &Namespace) -> bool {
    hash(&format!("__{}", namespace.name), id, 1)
        .is_some_and(|n| n >= namespace.start && n < namespace.end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv32a_matches_the_published_vectors() {
        assert_eq!(fnv32a(""), 0x811c_9dc5);
        assert_eq!(fnv32a("a"), 0xe40c_292c);
        assert_eq!(fnv32a("foobar"), 0xbf9c_f968);
    }
}
