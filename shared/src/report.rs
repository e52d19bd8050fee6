//! Campaign results: per variant the members counted, converters, revenue and points cost, the
//! uplift of each variant against the control with a 95% interval and a p-value, a
//! sample-ratio-mismatch check, a verdict in plain words, and a chart.
//!
//! The inputs are integer counters (see [`VariantCounts`]); statistics are f64, which is fine
//! here: nothing computed in this module ever touches a balance.

use serde::Serialize;
use statrs::distribution::{ChiSquared, ContinuousCDF, Normal, StudentsT};

/// Below this p-value the observed split is flagged as a sample-ratio mismatch.
pub const SRM_THRESHOLD: f64 = 0.001;
/// Two-sided significance for uplifts (95% intervals).
const ALPHA: f64 = 0.05;

/// One variant's counters, summed over their shards.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VariantCounts {
    pub variant: String,
    /// Members counted in the variant: the whole audience for broadcast campaigns, the exposed
    /// members for on_exposure ones.
    pub assigned: i64,
    /// Members with at least one purchase in the window.
    pub converters: i64,
    pub purchases: i64,
    /// Eligible amount purchased in the window, minor units.
    pub revenue: i64,
    /// Σ over members of (the member's revenue)², for the revenue variance.
    #[serde(serialize_with = "as_string")]
    pub revenue_sq: i128,
    /// Points the campaign gave beyond what the program would have (grants, bonuses, the extra
    /// of a multiplier).
    pub points: i64,
}

fn as_string<S: serde::Serializer>(v: &i128, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}

impl VariantCounts {
    pub fn add(&mut self, other: &VariantCounts) {
        self.assigned += other.assigned;
        self.converters += other.converters;
        self.purchases += other.purchases;
        self.revenue += other.revenue;
        self.revenue_sq += other.revenue_sq;
        self.points += other.points;
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VariantResult {
    pub variant: String,
    pub weight: f64,
    pub members: i64,
    pub converters: i64,
    pub conversion_rate: f64,
    /// The conversion rate's own 95% interval (for the chart).
    pub conversion_interval: [f64; 2],
    pub revenue: i64,
    pub revenue_per_member: f64,
    pub points_cost: i64,
    /// Against the control; `None` for the control itself.
    pub conversion_uplift: Option<Uplift>,
    pub revenue_uplift: Option<Uplift>,
}

/// A difference from the control, absolute (variant − control) and relative to the control.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Uplift {
    pub difference: f64,
    pub interval: [f64; 2],
    pub relative: Option<f64>,
    pub p_value: f64,
    pub significant: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampleRatio {
    pub chi_square: f64,
    pub p_value: f64,
    pub mismatch: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub campaign: String,
    pub name: String,
    /// What the members are: "audience" (broadcast) or "exposed" (on_exposure).
    pub denominator: String,
    pub variants: Vec<VariantResult>,
    pub sample_ratio: SampleRatio,
    pub verdict: String,
}

/// What a report is computed from.
pub struct ReportInput<'a> {
    pub campaign: &'a str,
    pub name: &'a str,
    pub denominator: &'a str,
    /// Variant keys and weights, control first.
    pub weights: &'a [(String, f64)],
    pub counts: &'a [VariantCounts],
}

/// Builds the report; variants without counters count as empty.
pub fn analyse(input: &ReportInput<'_>) -> Report {
    let counts: Vec<VariantCounts> = input
        .weights
        .iter()
        .map(|(key, _)| {
            input
                .counts
                .iter()
                .find(|c| &c.variant == key)
                .cloned()
                .unwrap_or_else(|| VariantCounts {
                    variant: key.clone(),
                    ..VariantCounts::default()
                })
        })
        .collect();
    let control = counts.first().cloned().unwrap_or_default();
    let variants: Vec<VariantResult> = counts
        .iter()
        .zip(input.weights)
        .enumerate()
        .map(|(i, (c, (_, weight)))| VariantResult {
            variant: c.variant.clone(),
            weight: *weight,
            members: c.assigned,
            converters: c.converters,
            conversion_rate: rate(c.converters, c.assigned),
            conversion_interval: proportion_interval(c.converters, c.assigned),
            revenue: c.revenue,
            revenue_per_member: rate(c.revenue, c.assigned),
            points_cost: c.points,
            conversion_uplift: (i > 0).then(|| two_proportion(&control, c)),
            revenue_uplift: (i > 0).then(|| welch(&control, c)),
        })
        .collect();
    let observed: Vec<i64> = counts.iter().map(|c| c.assigned).collect();
    let weights: Vec<f64> = input.weights.iter().map(|(_, w)| *w).collect();
    let sample_ratio = sample_ratio(&observed, &weights);
    let verdict = verdict(&variants, &sample_ratio);
    Report {
        campaign: input.campaign.to_string(),
        name: input.name.to_string(),
        denominator: input.denominator.to_string(),
        variants,
        sample_ratio,
        verdict,
    }
}

fn rate(part: i64, whole: i64) -> f64 {
    if whole > 0 {
        part as f64 / whole as f64
    } else {
        0.0
    }
}

fn z_critical() -> f64 {
    standard_normal().inverse_cdf(1.0 - ALPHA / 2.0)
}

fn standard_normal() -> Normal {
    Normal::standard()
}

/// Two-sided p-value of a standard normal statistic.
fn normal_p(z: f64) -> f64 {
    if !z.is_finite() {
        return if z.is_nan() { 1.0 } else { 0.0 };
    }
    2.0 * (1.0 - standard_normal().cdf(z.abs()))
}

/// Wald interval of one proportion (clamped to 0..1).
fn proportion_interval(x: i64, n: i64) -> [f64; 2] {
    if n == 0 {
        return [0.0, 0.0];
    }
    let p = rate(x, n);
    let half = z_critical() * (p * (1.0 - p) / n as f64).sqrt();
    [(p - half).max(0.0), (p + half).min(1.0)]
}

/// Conversion: the difference of proportions with an unpooled interval and a pooled z-test.
pub fn two_proportion(control: &VariantCounts, variant: &VariantCounts) -> Uplift {
    let (n1, n2) = (control.assigned as f64, variant.assigned as f64);
    let (p1, p2) = (
        rate(control.converters, control.assigned),
        rate(variant.converters, variant.assigned),
    );
    let difference = p2 - p1;
    if n1 == 0.0 || n2 == 0.0 {
        return no_data(difference);
    }
    let se = (p1 * (1.0 - p1) / n1 + p2 * (1.0 - p2) / n2).sqrt();
    let pooled = (control.converters + variant.converters) as f64 / (n1 + n2);
    let se_pooled = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    let p_value = if se_pooled > 0.0 {
        normal_p(difference / se_pooled)
    } else {
        1.0
    };
    let half = z_critical() * se;
    uplift(difference, half, p1, p_value)
}

/// Revenue per member: Welch's t-test (unequal variances), members without a purchase count 0.
pub fn welch(control: &VariantCounts, variant: &VariantCounts) -> Uplift {
    let (m1, v1, n1) = moments(control);
    let (m2, v2, n2) = moments(variant);
    let difference = m2 - m1;
    if n1 < 2.0 || n2 < 2.0 {
        return no_data(difference);
    }
    let (a, b) = (v1 / n1, v2 / n2);
    let se = (a + b).sqrt();
    if se == 0.0 {
        return uplift(
            difference,
            0.0,
            m1,
            if difference == 0.0 { 1.0 } else { 0.0 },
        );
    }
    let df = (a + b).powi(2) / (a * a / (n1 - 1.0) + b * b / (n2 - 1.0));
    let (p_value, critical) = match StudentsT::new(0.0, 1.0, df) {
        Ok(t) => (
            2.0 * (1.0 - t.cdf((difference / se).abs())),
            t.inverse_cdf(1.0 - ALPHA / 2.0),
        ),
        Err(_) => (normal_p(difference / se), z_critical()),
    };
    uplift(difference, critical * se, m1, p_value)
}

/// Mean and sample variance of revenue per member, and the member count.
fn moments(c: &VariantCounts) -> (f64, f64, f64) {
    let n = c.assigned as f64;
    if c.assigned == 0 {
        return (0.0, 0.0, 0.0);
    }
    let mean = c.revenue as f64 / n;
    let variance = if c.assigned > 1 {
        ((c.revenue_sq as f64 - n * mean * mean) / (n - 1.0)).max(0.0)
    } else {
        0.0
    };
    (mean, variance, n)
}

fn uplift(difference: f64, half: f64, base: f64, p_value: f64) -> Uplift {
    Uplift {
        difference,
        interval: [difference - half, difference + half],
        relative: (base > 0.0).then(|| difference / base),
        p_value,
        significant: p_value < ALPHA,
    }
}

fn no_data(difference: f64) -> Uplift {
    Uplift {
        difference,
        interval: [f64::NEG_INFINITY, f64::INFINITY],
        relative: None,
        p_value: 1.0,
        significant: false,
    }
}

/// Chi-square goodness of fit of the members counted per variant against the weights.
pub fn sample_ratio(observed: &[i64], weights: &[f64]) -> SampleRatio {
    let total: i64 = observed.iter().sum();
    let weight_sum: f64 = weights.iter().sum();
    let mut chi_square = 0.0;
    let mut cells = 0usize;
    for (o, w) in observed.iter().zip(weights) {
        let expected = total as f64 * w / weight_sum;
        if expected > 0.0 {
            chi_square += (*o as f64 - expected).powi(2) / expected;
            cells += 1;
        }
    }
    let p_value = if cells < 2 || total == 0 {
        1.0
    } else {
        ChiSquared::new((cells - 1) as f64).map_or(1.0, |d| 1.0 - d.cdf(chi_square))
    };
    SampleRatio {
        chi_square,
        p_value,
        mismatch: p_value < SRM_THRESHOLD,
    }
}

fn verdict(variants: &[VariantResult], srm: &SampleRatio) -> String {
    if srm.mismatch {
        return format!(
            "Do not trust these results: the members are not split as the weights say \
             (sample-ratio mismatch, p = {:.2e}). Look for members lost or added unevenly.",
            srm.p_value
        );
    }
    let Some(control) = variants.first() else {
        return "The campaign has no variants.".into();
    };
    if variants.iter().any(|v| v.members == 0) {
        return "Not enough data yet: a variant has no members.".into();
    }
    let best = variants[1..]
        .iter()
        .filter_map(|v| v.conversion_uplift.as_ref().map(|u| (v, u)))
        .filter(|(_, u)| u.significant)
        .max_by(|a, b| a.1.difference.total_cmp(&b.1.difference));
    match best {
        Some((v, u)) if u.difference > 0.0 => format!(
            "{} converts better than {}: {:.1}% against {:.1}%, {:+.1} points \
             (95% interval {:+.1} to {:+.1}, p = {:.3}).",
            v.variant,
            control.variant,
            100.0 * v.conversion_rate,
            100.0 * control.conversion_rate,
            100.0 * u.difference,
            100.0 * u.interval[0],
            100.0 * u.interval[1],
            u.p_value
        ),
        Some((v, u)) => format!(
            "{} converts worse than {} ({:+.1} points, p = {:.3}).",
            v.variant,
            control.variant,
            100.0 * u.difference,
            u.p_value
        ),
        None => format!(
            "No variant converts differently from {} with 95% confidence yet.",
            control.variant
        ),
    }
}

/// The conversion rate of each variant as bars with their 95% intervals.
pub fn svg(report: &Report) -> String {
    const WIDTH: f64 = 640.0;
    const HEIGHT: f64 = 360.0;
    const LEFT: f64 = 60.0;
    const BOTTOM: f64 = 300.0;
    const TOP: f64 = 40.0;
    let top_value = report
        .variants
        .iter()
        .map(|v| v.conversion_interval[1])
        .fold(0.01_f64, f64::max)
        * 1.1;
    let y = |value: f64| BOTTOM - (value / top_value) * (BOTTOM - TOP);
    let slot = (WIDTH - LEFT - 20.0) / report.variants.len().max(1) as f64;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <title>{} — conversion by variant</title>\n\
         <text x=\"{LEFT}\" y=\"24\" font-size=\"14\">{} — conversion rate with 95% intervals</text>\n\
         <line x1=\"{LEFT}\" y1=\"{BOTTOM}\" x2=\"{}\" y2=\"{BOTTOM}\" stroke=\"#333\"/>\n\
         <line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{BOTTOM}\" stroke=\"#333\"/>\n",
        escape(&report.name),
        escape(&report.name),
        WIDTH - 20.0
    );
    for tick in 0..=4 {
        let value = top_value * f64::from(tick) / 4.0;
        out += &format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.1}%</text>\n",
            LEFT - 6.0,
            y(value) + 4.0,
            100.0 * value
        );
    }
    for (i, v) in report.variants.iter().enumerate() {
        let x = LEFT + slot * i as f64 + slot * 0.2;
        let w = slot * 0.6;
        let fill = if i == 0 { "#9aa5b1" } else { "#3b82f6" };
        let mid = x + w / 2.0;
        let [low, high] = v.conversion_interval;
        out += &format!(
            "<g class=\"variant\" data-variant=\"{key}\">\n\
             <rect x=\"{x:.1}\" y=\"{top:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"{fill}\"/>\n\
             <line x1=\"{mid:.1}\" y1=\"{yl:.1}\" x2=\"{mid:.1}\" y2=\"{yh:.1}\" stroke=\"#111\" stroke-width=\"2\"/>\n\
             <line x1=\"{a:.1}\" y1=\"{yl:.1}\" x2=\"{b:.1}\" y2=\"{yl:.1}\" stroke=\"#111\"/>\n\
             <line x1=\"{a:.1}\" y1=\"{yh:.1}\" x2=\"{b:.1}\" y2=\"{yh:.1}\" stroke=\"#111\"/>\n\
             <text x=\"{mid:.1}\" y=\"{label:.1}\" text-anchor=\"middle\">{key} ({pct:.1}%, n={n})</text>\n\
             </g>\n",
            key = escape(&v.variant),
            top = y(v.conversion_rate),
            h = BOTTOM - y(v.conversion_rate),
            yl = y(low),
            yh = y(high),
            a = mid - 8.0,
            b = mid + 8.0,
            label = BOTTOM + 18.0,
            pct = 100.0 * v.conversion_rate,
            n = v.members,
        );
    }
    if report.sample_ratio.mismatch {
        out += &format!(
            "<text x=\"{LEFT}\" y=\"{}\" fill=\"#b91c1c\">Sample-ratio mismatch: do not trust these results</text>\n",
            BOTTOM + 40.0
        );
    }
    out += "</svg>\n";
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(variant: &str, assigned: i64, converters: i64) -> VariantCounts {
        VariantCounts {
            variant: variant.into(),
            assigned,
            converters,
            ..VariantCounts::default()
        }
    }

    #[test]
    fn two_proportion_matches_a_worked_example() {
        // GIVEN 200/1000 against 250/1000
        let u = two_proportion(&counts("a", 1000, 200), &counts("b", 1000, 250));
        // THEN the difference is 5 points, z = 2.6774 pooled (p ≈ 0.007420), and the unpooled
        // interval is 0.05 ± 1.96 × 0.018641
        assert!((u.difference - 0.05).abs() < 1e-12);
        assert!((u.p_value - 0.007420).abs() < 1e-5, "{}", u.p_value);
        assert!((u.interval[0] - (0.05 - 1.959964 * 0.018641)).abs() < 1e-5);
        assert!(u.significant);
    }

    #[test]
    fn welch_matches_a_worked_example() {
        // GIVEN revenues {0,0,10,10} (mean 5, s² = 33.33) and {0,10,10,20} (mean 10, s² = 66.67)
        let a = VariantCounts {
            variant: "a".into(),
            assigned: 4,
            revenue: 20,
            revenue_sq: 200,
            ..Default::default()
        };
        let b = VariantCounts {
            variant: "b".into(),
            assigned: 4,
            revenue: 40,
            revenue_sq: 600,
            ..Default::default()
        };
        let u = welch(&a, &b);
        // THEN t = 5 / sqrt(25) = 1, df = 5.4, p ≈ 0.36
        assert!((u.difference - 5.0).abs() < 1e-12);
        assert!((u.p_value - 0.360).abs() < 3e-3, "{}", u.p_value);
        assert!(!u.significant);
    }

    #[test]
    fn a_planted_mismatch_is_flagged_and_a_fair_split_is_not() {
        // GIVEN 50/50 weights
        let weights = [0.5, 0.5];
        // WHEN 5,000 against 4,600 are observed (chi² 16.7), THEN that is a mismatch
        assert!(sample_ratio(&[5000, 4600], &weights).mismatch);
        // WHEN 5,000 against 4,950, THEN it is not
        assert!(!sample_ratio(&[5000, 4950], &weights).mismatch);
    }

    #[test]
    fn the_chart_has_a_bar_and_an_interval_per_variant() {
        let report = analyse(&ReportInput {
            campaign: "c",
            name: "Double <points>",
            denominator: "exposed",
            weights: &[("control".into(), 0.5), ("x2".into(), 0.5)],
            counts: &[counts("control", 100, 10), counts("x2", 100, 20)],
        });
        let svg = svg(&report);
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(svg.contains("data-variant=\"x2\""));
        assert!(svg.contains("Double &lt;points&gt;"));
    }
}
