//! `backtest --html FILE`: the backtest as one self-contained page for an
//! analyst. No network: the charts are SVG drawn here, the style and the
//! one small script (a threshold explorer over the embedded curve data) are
//! inline. Sections: headline numbers, the score distribution of fraud vs
//! legit, precision / recall curves over the review and hold thresholds
//! with the current points marked, per-rule hits / precision / recall /
//! overlap, money held on fraud vs legit, and the verdicts a baseline rule
//! file would change.

use std::fmt::Write as _;

use super::backtest::{CurvePoint, Report};

/// Escapes text for HTML element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

const W: f64 = 560.0;
const H: f64 = 260.0;
const PAD: f64 = 40.0;

/// Score histogram of fraud vs legit (share of each class per bucket, so
/// the rare class is visible).
fn score_histogram(r: &Report) -> String {
    let s = &r.scores;
    let mut all: std::collections::BTreeMap<i32, (u64, u64)> = Default::default();
    for (k, v) in s.unforced_flag.iter() {
        let e = all.entry(*k).or_default();
        e.0 += v.0;
        e.1 += v.1;
    }
    let (Some(lo), Some(hi)) = (all.keys().next().copied(), all.keys().next_back().copied()) else {
        return "<p>No labelled events scored by their score alone.</p>".into();
    };
    let width = ((hi - lo) / 30).max(1);
    let buckets = ((hi - lo) / width + 1) as usize;
    let mut fraud = vec![0u64; buckets];
    let mut legit = vec![0u64; buckets];
    for (k, (f, l)) in &all {
        let b = ((k - lo) / width) as usize;
        fraud[b] += f;
        legit[b] += l;
    }
    let (ft, lt) = (
        fraud.iter().sum::<u64>().max(1) as f64,
        legit.iter().sum::<u64>().max(1) as f64,
    );
    let max_share = fraud
        .iter()
        .map(|c| *c as f64 / ft)
        .chain(legit.iter().map(|c| *c as f64 / lt))
        .fold(0.0_f64, f64::max)
        .max(1e-9);
    let bw = (W - 2.0 * PAD) / buckets as f64;
    let mut svg = format!(
        r#"<svg id="hist" viewBox="0 0 {W} {H}" role="img" aria-label="score distribution"><title>Share of fraud and legit events per score bucket</title>"#
    );
    axes(&mut svg);
    for i in 0..buckets {
        for (j, (counts, total, class)) in [(&legit, lt, "legit"), (&fraud, ft, "fraud")]
            .into_iter()
            .enumerate()
        {
            let share = counts[i] as f64 / total;
            let h = share / max_share * (H - 2.0 * PAD);
            let x = PAD + i as f64 * bw + j as f64 * bw / 2.0;
            let _ = write!(
                svg,
                r#"<rect class="{class}" x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}"><title>{class}, score {}..{}: {} events ({:.1}%)</title></rect>"#,
                H - PAD - h,
                (bw / 2.0 - 1.0).max(1.0),
                lo + i as i32 * width,
                lo + (i as i32 + 1) * width - 1,
                counts[i],
                share * 100.0
            );
        }
    }
    for (row, (t, label)) in [(s.review, "review"), (s.hold, "hold")]
        .into_iter()
        .enumerate()
    {
        if (lo..=hi).contains(&t) {
            let x = PAD + ((t - lo) as f64 / width as f64) * bw;
            let _ = write!(
                svg,
                r#"<line class="mark" x1="{x:.1}" x2="{x:.1}" y1="{PAD}" y2="{:.1}"/><text x="{:.1}" y="{:.1}">{label} {t}</text>"#,
                H - PAD,
                x + 3.0,
                PAD + 12.0 + 14.0 * row as f64
            );
        }
    }
    let _ = write!(
        svg,
        r#"<text x="{PAD}" y="{:.1}">score {lo}</text><text x="{:.1}" y="{:.1}" text-anchor="end">{hi}</text></svg>"#,
        H - PAD + 16.0,
        W - PAD,
        H - PAD + 16.0
    );
    svg
}

fn axes(svg: &mut String) {
    let _ = write!(
        svg,
        r#"<line class="axis" x1="{PAD}" y1="{:.1}" x2="{:.1}" y2="{:.1}"/><line class="axis" x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{:.1}"/>"#,
        H - PAD,
        W - PAD,
        H - PAD,
        H - PAD
    );
}

/// Precision (y) against recall (x), one curve, its current point marked.
fn pr_curve(id: &str, points: &[CurvePoint], current: i32, what: &str) -> String {
    let x = |recall: f64| PAD + recall * (W - 2.0 * PAD);
    let y = |precision: f64| H - PAD - precision * (H - 2.0 * PAD);
    let mut svg = format!(
        r#"<svg id="{id}" viewBox="0 0 {W} {H}" role="img" aria-label="{what}"><title>{what}</title>"#
    );
    axes(&mut svg);
    for v in [0.25, 0.5, 0.75, 1.0] {
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{PAD}" x2="{:.1}" y1="{:.1}" y2="{:.1}"/><text x="4" y="{:.1}">{v}</text><text x="{:.1}" y="{:.1}" text-anchor="middle">{v}</text>"#,
            W - PAD,
            y(v),
            y(v),
            y(v) + 4.0,
            x(v),
            H - PAD + 16.0
        );
    }
    let path: Vec<String> = points
        .iter()
        .map(|p| format!("{:.1},{:.1}", x(p.recall), y(p.precision)))
        .collect();
    let _ = write!(
        svg,
        r#"<polyline class="curve" points="{}"/>"#,
        path.join(" ")
    );
    if let Some(p) = points.iter().find(|p| p.threshold == current) {
        let _ = write!(
            svg,
            r#"<circle class="now" cx="{:.1}" cy="{:.1}" r="5"><title>now: threshold {current}, precision {:.3}, recall {:.3}</title></circle><text x="{:.1}" y="{:.1}">threshold {current}</text>"#,
            x(p.recall),
            y(p.precision),
            p.precision,
            p.recall,
            x(p.recall) + 8.0,
            y(p.precision) - 8.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end">recall</text><text x="{PAD}" y="{:.1}">precision</text></svg>"#,
        W - PAD,
        H - 4.0,
        PAD - 8.0
    );
    svg
}

fn money(m: &std::collections::BTreeMap<String, i64>) -> String {
    if m.is_empty() {
        return "0".into();
    }
    m.iter()
        .map(|(c, v)| format!("{v} {}", esc(c)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The whole page.
pub fn render(r: &Report) -> String {
    let flag = r.scores.curve(false);
    let hold = r.scores.curve(true);
    let mut h = String::with_capacity(64 * 1024);
    let _ = write!(
        h,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fraudline backtest: {ver}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1d2430; max-width: 1200px; }}
h1 {{ font-size: 20px; }} h2 {{ font-size: 16px; margin-top: 28px; }}
.cards {{ display: flex; gap: 12px; flex-wrap: wrap; }}
.card {{ border: 1px solid #d0d7e2; border-radius: 6px; padding: 8px 12px; min-width: 120px; }}
.card b {{ display: block; font-size: 18px; }}
.charts {{ display: flex; gap: 16px; flex-wrap: wrap; }}
svg {{ width: 560px; max-width: 100%; height: auto; border: 1px solid #e4e8ef; background: #fff; }}
svg text {{ font-size: 11px; fill: #4a5566; }}
.axis {{ stroke: #4a5566; }} .grid {{ stroke: #eef1f5; }}
.fraud {{ fill: #d9534f; }} .legit {{ fill: #5b8def; }}
.mark {{ stroke: #333; stroke-dasharray: 4 3; }}
.curve {{ fill: none; stroke: #2a7a4b; stroke-width: 2; }}
.now {{ fill: #f0ad4e; stroke: #333; }}
table {{ border-collapse: collapse; margin-top: 8px; }}
th, td {{ border-bottom: 1px solid #e4e8ef; padding: 4px 8px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
.shadow {{ color: #7a8699; }}
#explore output {{ font-weight: bold; }}
</style></head><body>
<h1>Backtest of rules <code>{ver}</code></h1>
<p>{events} events replayed in {secs:.1} s ({refused} refused); {labelled} labelled, {fraud} fraud.
Review threshold {review}, hold threshold {holdt}.</p>
"#,
        ver = esc(&r.rules_version),
        events = r.events,
        secs = r.seconds,
        refused = r.refused,
        labelled = r.labelled,
        fraud = r.fraud,
        review = r.scores.review,
        holdt = r.scores.hold,
    );
    h.push_str(r#"<div class="cards">"#);
    for (d, n) in &r.decisions {
        let _ = write!(
            h,
            r#"<div class="card">{}<b>{n}</b>{:.2}%</div>"#,
            d.as_str(),
            *n as f64 * 100.0 / r.events.max(1) as f64
        );
    }
    if let Some(q) = &r.overall {
        let _ = write!(
            h,
            r#"<div class="card">precision<b>{:.3}</b>flagged vs labels</div><div class="card">recall<b>{:.3}</b>TP {} FN {}</div><div class="card">F1<b>{:.3}</b>FP {}</div>"#,
            q.precision, q.recall, q.true_positives, q.false_negatives, q.f1, q.false_positives
        );
    }
    h.push_str("</div>");

    if r.labelled > 0 {
        h.push_str("<h2>Scores: fraud vs legit</h2><div class=\"charts\">");
        h.push_str(&score_histogram(r));
        h.push_str("</div><p>Share of each class per score bucket (events a forcing rule or list hit decided are left out). Red: fraud; blue: legit.</p>");
        h.push_str("<h2>Precision / recall over the thresholds</h2><div class=\"charts\">");
        h.push_str(&pr_curve(
            "pr-review",
            &flag,
            r.scores.review,
            "flagged (REVIEW or HOLD) as the review threshold moves",
        ));
        h.push_str(&pr_curve(
            "pr-hold",
            &hold,
            r.scores.hold,
            "held (HOLD) as the hold threshold moves",
        ));
        h.push_str("</div>");
        let _ = write!(
            h,
            r#"<div id="explore"><label>review threshold <input id="t" type="range" min="{}" max="{}" value="{}"></label> <output id="at"></output></div>"#,
            flag.first().map_or(0, |p| p.threshold),
            flag.last().map_or(0, |p| p.threshold),
            r.scores.review
        );
    }

    h.push_str("<h2>Rules</h2><table><tr><th>rule</th><th>mode</th><th>hits</th><th>precision</th><th>recall</th><th>F1</th><th>only rule hit</th><th>overlaps most with</th></tr>");
    for rule in &r.rules {
        let (p, rc, f1) =
            rule.quality
                .as_ref()
                .map_or(("".to_string(), "".to_string(), "".to_string()), |q| {
                    (
                        format!("{:.3}", q.precision),
                        format!("{:.3}", q.recall),
                        format!("{:.3}", q.f1),
                    )
                });
        let overlap = rule
            .overlaps_most_with
            .as_ref()
            .map_or(String::new(), |(id, n)| format!("{} ({n})", esc(id)));
        let _ = write!(
            h,
            r#"<tr class="{mode}"><td>{id}</td><td>{mode}</td><td>{hits}</td><td>{p}</td><td>{rc}</td><td>{f1}</td><td>{u}</td><td>{overlap}</td></tr>"#,
            mode = esc(&rule.mode),
            id = esc(&rule.rule_id),
            hits = rule.hits,
            u = rule.unique_hits,
        );
    }
    h.push_str("</table>");

    if r.labelled > 0 {
        let _ = write!(
            h,
            "<h2>Money held</h2><table><tr><th>held on</th><th>minor units, per currency</th></tr><tr><td>fraud</td><td>{}</td></tr><tr><td>legit</td><td>{}</td></tr></table>",
            money(&r.money.held_fraud),
            money(&r.money.held_legit)
        );
        h.push_str("<h2>By label</h2><table><tr><th>label</th><th>flagged</th><th>events</th><th>share</th></tr>");
        for (l, (f, n)) in &r.by_label {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{f}</td><td>{n}</td><td>{:.1}%</td></tr>",
                esc(l),
                *f as f64 * 100.0 / (*n).max(1) as f64
            );
        }
        h.push_str("</table>");
    }

    if !r.models.is_empty() {
        h.push_str("<h2>Models</h2><table><tr><th>role</th><th>version</th><th>average precision</th><th>recall at precision &ge; 0.90 (cut)</th>");
        for (cut, _) in &r.models[0].cuts {
            let _ = write!(h, "<th>P / R at score &ge; {cut}</th>");
        }
        h.push_str("</tr>");
        for m in &r.models {
            let at90 = m
                .recall_at_precision_90
                .map_or("-".to_string(), |(rec, cut)| format!("{rec:.3} ({cut:.3})"));
            let _ = write!(
                h,
                "<tr><td>{}</td><td><code>{}</code></td><td>{:.3}</td><td>{at90}</td>",
                m.role,
                esc(&m.version),
                m.average_precision
            );
            for (_, q) in &m.cuts {
                let _ = write!(h, "<td>{:.3} / {:.3}</td>", q.precision, q.recall);
            }
            h.push_str("</tr>");
        }
        h.push_str("</table>");
    }

    if let Some(b) = &r.baseline_version {
        let _ = write!(
            h,
            "<h2>Against baseline <code>{}</code>: {} verdicts changed</h2><table><tr><th>change</th><th>events</th></tr>",
            esc(b),
            r.changed
        );
        for (t, n) in &r.transitions {
            let _ = write!(h, "<tr><td>{}</td><td>{n}</td></tr>", esc(t));
        }
        h.push_str("</table><table><tr><th>event</th><th>baseline</th><th>now</th><th>rules added</th><th>rules removed</th></tr>");
        for c in &r.changed_examples {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&c.event_id),
                c.baseline.as_str(),
                c.now.as_str(),
                esc(&c.rules_added.join(", ")),
                esc(&c.rules_removed.join(", "))
            );
        }
        h.push_str("</table>");
    }

    // The threshold explorer: the curve's points, and what a threshold gives.
    let data = serde_json::to_string(&flag).unwrap_or_else(|_| "[]".into());
    let _ = write!(
        h,
        r#"<script id="curve" type="application/json">{}</script>
<script>
(function () {{
  var points = JSON.parse(document.getElementById("curve").textContent);
  var input = document.getElementById("t"), out = document.getElementById("at");
  if (!input || !out) return;
  function show() {{
    var t = Number(input.value), p = null;
    for (var i = 0; i < points.length; i++) if (points[i].threshold === t) p = points[i];
    out.textContent = p ? ("threshold " + t + ": precision " + p.precision.toFixed(3) +
      ", recall " + p.recall.toFixed(3) + ", " + p.flagged + " flagged") : "";
  }}
  input.addEventListener("input", show);
  show();
  document.body.setAttribute("data-ready", "1");
}})();
</script>
</body></html>
"#,
        // A JSON string cannot hold "</": keep the script element closed
        // only where it ends.
        data.replace("</", "<\\/")
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped() {
        assert_eq!(esc(r#"<b a="x">&'"#), "&lt;b a=&quot;x&quot;&gt;&amp;&#39;");
    }
}
