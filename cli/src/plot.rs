//! A small SVG line plot: accuracy (with 95% intervals) against forward tokens per question on
//! a logarithmic axis, one line per strategy.

/// One strategy's points: (tokens per question, accuracy in [0, 1], 95% interval).
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64, (f64, f64))>,
}

const COLOURS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// Escapes text for SVG.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG document.
pub fn write_svg(title: &str, series: &[Series]) -> String {
    let (width, height) = (760.0, 460.0);
    let (left, right, top, bottom) = (70.0, 170.0, 40.0, 60.0);
    let points = || series.iter().flat_map(|s| s.points.iter());
    let xs: Vec<f64> = points().map(|p| p.0.max(1.0)).collect();
    let (mut x_min, mut x_max) = xs
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    if xs.is_empty() {
        (x_min, x_max) = (1.0, 10.0);
    }
    let (log_lo, log_hi) = (
        x_min.log10().floor(),
        x_max.log10().ceil().max(x_min.log10().floor() + 1.0),
    );
    let y_lo = points().map(|p| p.2.0).fold(1.0f64, f64::min);
    let y_hi = points().map(|p| p.2.1).fold(0.0f64, f64::max);
    let (y_lo, y_hi) = if y_lo > y_hi {
        (0.0, 1.0)
    } else {
        (
            (y_lo * 10.0).floor() / 10.0,
            ((y_hi * 10.0).ceil() / 10.0).max((y_lo * 10.0).floor() / 10.0 + 0.1),
        )
    };
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let sx = |x: f64| left + (x.max(1.0).log10() - log_lo) / (log_hi - log_lo) * plot_w;
    let sy = |y: f64| top + (1.0 - (y - y_lo) / (y_hi - y_lo)) * plot_h;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n",
        left + plot_w / 2.0,
        escape(title)
    );
    // Axes, grid and ticks.
    svg.push_str(&format!(
        "<rect x=\"{left}\" y=\"{top}\" width=\"{plot_w}\" height=\"{plot_h}\" fill=\"none\" stroke=\"#444\"/>\n"
    ));
    let mut decade = log_lo;
    while decade <= log_hi {
        for m in [1.0, 2.0, 5.0] {
            let x = m * 10f64.powf(decade);
            let lx = x.log10();
            if lx < log_lo - 1e-9 || lx > log_hi + 1e-9 {
                continue;
            }
            let px = sx(x);
            svg.push_str(&format!(
                "<line x1=\"{px:.1}\" y1=\"{top}\" x2=\"{px:.1}\" y2=\"{}\" stroke=\"#ddd\"/>\n<text x=\"{px:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
                top + plot_h,
                top + plot_h + 16.0,
                x
            ));
        }
        decade += 1.0;
    }
    let steps = ((y_hi - y_lo) / 0.05).round() as usize;
    for i in 0..=steps {
        let y = y_lo + i as f64 * 0.05;
        let py = sy(y);
        svg.push_str(&format!(
            "<line x1=\"{left}\" y1=\"{py:.1}\" x2=\"{}\" y2=\"{py:.1}\" stroke=\"#eee\"/>\n<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}%</text>\n",
            left + plot_w,
            left - 6.0,
            py + 4.0,
            100.0 * y
        ));
    }
    svg.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">forward tokens per question (log scale)</text>\n<text x=\"18\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {})\">accuracy</text>\n",
        left + plot_w / 2.0,
        height - 16.0,
        top + plot_h / 2.0,
        top + plot_h / 2.0
    ));
    // One line per series, with interval bars and a legend entry.
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let mut pts = s.points.clone();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        if pts.len() > 1 {
            let path: Vec<String> = pts
                .iter()
                .map(|p| format!("{:.1},{:.1}", sx(p.0), sy(p.1)))
                .collect();
            svg.push_str(&format!(
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"/>\n",
                path.join(" ")
            ));
        }
        for p in &pts {
            let (px, py) = (sx(p.0), sy(p.1));
            svg.push_str(&format!(
                "<line x1=\"{px:.1}\" y1=\"{:.1}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"{colour}\" stroke-opacity=\"0.5\"/>\n<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"4\" fill=\"{colour}\"/>\n",
                sy(p.2.0),
                sy(p.2.1)
            ));
        }
        let ly = top + 10.0 + 20.0 * i as f64;
        let lx = left + plot_w + 16.0;
        svg.push_str(&format!(
            "<circle cx=\"{lx}\" cy=\"{ly}\" r=\"4\" fill=\"{colour}\"/>\n<text x=\"{}\" y=\"{}\">{}</text>\n",
            lx + 10.0,
            ly + 4.0,
            escape(&s.name)
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_has_a_line_per_series_and_a_legend() {
        let series = vec![
            Series {
                name: "ets".into(),
                points: vec![(1000.0, 0.6, (0.55, 0.65)), (4000.0, 0.7, (0.65, 0.75))],
            },
            Series {
                name: "a<b".into(),
                points: vec![(100.0, 0.5, (0.45, 0.55))],
            },
        ];
        let svg = write_svg("t", &series);
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 3 + 2);
        assert!(svg.contains("a&lt;b"));
        assert!(svg.ends_with("</svg>\n"));
    }
}
