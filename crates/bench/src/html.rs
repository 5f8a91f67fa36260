//! The self-contained HTML reports: one page, inline SVG charts drawn with plotters' SVG backend
//! (text is left to the browser, so no font files are needed).

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::Error;
use crate::report::{Report, SecondSample};
use crate::summary;

const WIDTH: u32 = 760;
const HEIGHT: u32 = 360;
const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const GREEN: RGBColor = RGBColor(44, 160, 44);

type DrawResult = Result<(), Box<dyn std::error::Error>>;
/// A named, coloured line of `(x, y)` points.
type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);
/// A named, coloured group of bar heights, one per category.
type Group<'a> = (&'a str, RGBColor, Vec<f64>);

fn chart(
    name: &'static str,
    draw: impl FnOnce(&mut String) -> DrawResult,
) -> Result<String, Error> {
    let mut svg = String::new();
    draw(&mut svg).map_err(|e| Error::Chart {
        chart: name,
        message: e.to_string(),
    })?;
    Ok(svg)
}

/// A line chart of `(x, y)` series.
fn lines(
    name: &'static str,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series<'_>],
) -> Result<String, Error> {
    lines_sized(name, (WIDTH, HEIGHT), title, x_desc, y_desc, series)
}

fn lines_sized(
    name: &'static str,
    size: (u32, u32),
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series<'_>],
) -> Result<String, Error> {
    chart(name, |svg| {
        let root = SVGBackend::with_string(svg, size).into_drawing_area();
        root.fill(&WHITE)?;
        let x_max = series
            .iter()
            .flat_map(|s| s.2.iter().map(|p| p.0))
            .fold(1.0f64, f64::max);
        let y_max = series
            .iter()
            .flat_map(|s| s.2.iter().map(|p| p.1))
            .fold(0.0f64, f64::max);
        let y_max = if y_max > 0.0 { y_max * 1.1 } else { 1.0 };
        let mut c = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
        c.configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        for (label, color, points) in series {
            let color = *color;
            c.draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        }
        c.configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    })
}

/// Bars per category, one bar per group side by side.
fn bars(
    name: &'static str,
    title: &str,
    y_desc: &str,
    categories: &[String],
    groups: &[Group<'_>],
) -> Result<String, Error> {
    bars_sized(name, (WIDTH, HEIGHT), title, y_desc, categories, groups)
}

fn bars_sized(
    name: &'static str,
    size: (u32, u32),
    title: &str,
    y_desc: &str,
    categories: &[String],
    groups: &[Group<'_>],
) -> Result<String, Error> {
    chart(name, |svg| {
        let root = SVGBackend::with_string(svg, size).into_drawing_area();
        root.fill(&WHITE)?;
        let n = categories.len().max(1);
        let y_max = groups
            .iter()
            .flat_map(|g| g.2.iter().copied())
            .fold(0.0f64, f64::max);
        let y_max = if y_max > 0.0 { y_max * 1.15 } else { 1.0 };
        let mut c = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..n as f64, 0.0..y_max)?;
        c.configure_mesh()
            .disable_x_mesh()
            .x_labels(n * 2 + 1)
            .x_label_formatter(&|x: &f64| {
                // Label only the middle of each category's slot.
                let i = x.floor();
                if (x - i - 0.5).abs() < 1e-6 && (i as usize) < categories.len() {
                    categories[i as usize].clone()
                } else {
                    String::new()
                }
            })
            .y_desc(y_desc)
            .draw()?;
        let width = 0.8 / groups.len().max(1) as f64;
        for (g, (label, color, values)) in groups.iter().enumerate() {
            let color = *color;
            c.draw_series(values.iter().enumerate().map(|(i, v)| {
                let x0 = i as f64 + 0.1 + g as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width * 0.95, *v)], color.filled())
            }))?
            .label(*label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        }
        if groups.len() > 1 {
            c.configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
        root.present()?;
        Ok(())
    })
}

/// Latency histogram on a logarithmic latency axis.
fn histogram(report: &Report) -> Result<String, Error> {
    chart("latency histogram", |svg| {
        let root = SVGBackend::with_string(svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let step = 2f64.powf(0.25);
        let buckets: Vec<(f64, f64, u64)> = report
            .latency_histogram
            .iter()
            .scan(None::<f64>, |prev, b| {
                let lower = prev.unwrap_or(b.upper_ms / step).max(0.001);
                *prev = Some(b.upper_ms);
                Some((lower, b.upper_ms.max(lower * 1.0001), b.count))
            })
            .collect();
        // The x axis is log2(ms), drawn linearly, with one label per power of two: plotters' own
        // log scale leaves sub-millisecond ranges unlabelled.
        let lo = buckets.first().map_or(0.001, |b| b.0).log2().floor();
        let hi = buckets
            .last()
            .map_or(1.0, |b| b.1)
            .log2()
            .ceil()
            .max(lo + 1.0);
        let top = buckets.iter().map(|b| b.2).max().unwrap_or(0).max(1) as f64 * 1.1;
        let mut c = ChartBuilder::on(&root)
            .caption("Latency histogram", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(lo..hi, 0.0..top)?;
        c.configure_mesh()
            .x_labels((hi - lo) as usize + 1)
            .x_label_formatter(&|x: &f64| {
                if (x - x.round()).abs() < 1e-6 {
                    let ms = 2f64.powf(x.round());
                    if ms >= 1.0 {
                        format!("{ms:.0}")
                    } else {
                        format!("{ms}")
                    }
                } else {
                    String::new()
                }
            })
            .x_desc("latency (ms, log scale)")
            .y_desc("requests")
            .draw()?;
        c.draw_series(buckets.iter().map(|&(l, u, n)| {
            Rectangle::new([(l.log2(), 0.0), (u.log2(), n as f64)], BLUE.filled())
        }))?;
        root.present()?;
        Ok(())
    })
}

/// The colours of the public chart functions' series, in order (then repeated).
const PALETTE: [RGBColor; 6] = [
    BLUE,
    ORANGE,
    GREEN,
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// An SVG line chart of named `(x, y)` series, `size` pixels (width, height), from plain numbers;
/// the axes start at 0. For reports built outside this crate (the `scalelab bench scenario`
/// experiments).
pub fn line_chart(
    size: (u32, u32),
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<String, Error> {
    let series: Vec<Series<'_>> = series
        .iter()
        .enumerate()
        .map(|(i, (name, points))| (name.as_str(), PALETTE[i % PALETTE.len()], points.clone()))
        .collect();
    lines_sized("line chart", size, title, x_desc, y_desc, &series)
}

/// An SVG bar chart from plain numbers: one slot per category, one bar per named group in each
/// slot (each group holds one value per category), `size` pixels (width, height).
pub fn bar_chart(
    size: (u32, u32),
    title: &str,
    y_desc: &str,
    categories: &[String],
    groups: &[(String, Vec<f64>)],
) -> Result<String, Error> {
    let groups: Vec<Group<'_>> = groups
        .iter()
        .enumerate()
        .map(|(i, (name, values))| (name.as_str(), PALETTE[i % PALETTE.len()], values.clone()))
        .collect();
    bars_sized("bar chart", size, title, y_desc, categories, &groups)
}

/// Escapes text for HTML content and attribute values.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page(title: &str, summary: &str, sections: &[(&str, String)]) -> String {
    let mut html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>body{{font-family:sans-serif;margin:2em;max-width:820px}}\
         pre{{background:#f6f6f6;padding:1em;overflow-x:auto}}\
         section{{margin:2em 0}}</style></head>\n<body><h1>{t}</h1>\n<pre>{s}</pre>\n",
        t = escape(title),
        s = escape(summary)
    );
    for (heading, svg) in sections {
        html.push_str(&format!(
            "<section><h2>{}</h2>\n{}\n</section>\n",
            escape(heading),
            svg
        ));
    }
    html.push_str("</body></html>\n");
    html
}

/// The seconds worth plotting. The last one is usually a sliver (answers that came in after the
/// duration ended): as a rate it would plot as a misleading drop, so it is left out unless it is
/// all there is.
fn plotted(r: &Report) -> impl Iterator<Item = &SecondSample> {
    let keep_last = r.timeline.len() <= 1
        || r.timeline
            .last()
            .is_some_and(|s| s.second as f64 + 0.5 <= r.elapsed_s);
    let n = r.timeline.len() - usize::from(!keep_last);
    r.timeline.iter().take(n)
}

/// The charts of one run, as `(heading, svg)`.
pub fn charts(r: &Report) -> Result<Vec<(&'static str, String)>, Error> {
    let per_second = |f: fn(&SecondSample) -> f64| -> Vec<(f64, f64)> {
        plotted(r).map(|s| (s.second as f64 + 0.5, f(s))).collect()
    };
    let over_time = lines(
        "latency over time",
        "Latency per second",
        "seconds",
        "ms",
        &[
            ("p50", BLUE, per_second(|s| s.p50_ms)),
            ("p99", ORANGE, per_second(|s| s.p99_ms)),
        ],
    )?;
    let rps = lines(
        "requests per second",
        "Requests per second",
        "seconds",
        "answers",
        &[
            ("answers", GREEN, per_second(|s| s.requests as f64)),
            ("errors", ORANGE, per_second(|s| s.errors as f64)),
        ],
    )?;
    let instances: Vec<String> = if r.instances.is_empty() {
        vec!["(no X-Served-By)".into()]
    } else {
        r.instances.iter().map(|i| i.id.clone()).collect()
    };
    let per_instance = bars(
        "requests per instance",
        "Requests per instance (X-Served-By)",
        "answers",
        &instances,
        &[(
            "answers",
            BLUE,
            r.instances.iter().map(|i| i.count as f64).collect(),
        )],
    )?;
    let pick = |l: &Option<crate::report::LatencySummary>| {
        l.as_ref()
            .map_or(vec![0.0; 3], |l| vec![l.p50_ms, l.p90_ms, l.p99_ms])
    };
    let hit_miss = bars(
        "hit vs miss",
        &format!(
            "Cache hit vs miss latency ({} hits, {} misses)",
            r.cache.hits, r.cache.misses
        ),
        "ms",
        &["p50".into(), "p90".into(), "p99".into()],
        &[
            ("HIT", GREEN, pick(&r.cache.hit_latency)),
            ("MISS", ORANGE, pick(&r.cache.miss_latency)),
        ],
    )?;
    Ok(vec![
        ("Latency over time", over_time),
        ("Requests per second", rps),
        ("Latency histogram", histogram(r)?),
        ("Requests per instance", per_instance),
        ("Cache: hit vs miss", hit_miss),
    ])
}

fn write(dir: &Path, html: &str) -> Result<PathBuf, Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join("index.html");
    std::fs::write(&path, html).map_err(|e| Error::io(&path, e))?;
    Ok(path)
}

/// Writes `dir/index.html` for one run (and `dir/report.json` beside it); returns the page's path.
pub fn write_report(dir: &Path, report: &Report) -> Result<PathBuf, Error> {
    let sections = charts(report)?;
    let path = write(
        dir,
        &page("scalelab bench report", &summary::render(report), &sections),
    )?;
    crate::write_json(&dir.join("report.json"), report)?;
    Ok(path)
}

/// Writes `dir/index.html` comparing two runs; returns the page's path.
pub fn write_comparison(
    dir: &Path,
    a_name: &str,
    a: &Report,
    b_name: &str,
    b: &Report,
) -> Result<PathBuf, Error> {
    let pct = |l: &crate::report::LatencySummary| vec![l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms];
    let percentiles = bars(
        "compare percentiles",
        "Latency percentiles",
        "ms",
        &["p50".into(), "p90".into(), "p99".into(), "p99.9".into()],
        &[("A", BLUE, pct(&a.latency)), ("B", ORANGE, pct(&b.latency))],
    )?;
    let series = |r: &Report, f: fn(&SecondSample) -> f64| -> Vec<(f64, f64)> {
        plotted(r).map(|s| (s.second as f64 + 0.5, f(s))).collect()
    };
    let rps = lines(
        "compare rps",
        "Requests per second",
        "seconds",
        "answers",
        &[
            ("A", BLUE, series(a, |s| s.requests as f64)),
            ("B", ORANGE, series(b, |s| s.requests as f64)),
        ],
    )?;
    let p99 = lines(
        "compare p99",
        "p99 latency per second",
        "seconds",
        "ms",
        &[
            ("A", BLUE, series(a, |s| s.p99_ms)),
            ("B", ORANGE, series(b, |s| s.p99_ms)),
        ],
    )?;
    let text = summary::render_comparison(a_name, a, b_name, b);
    write(
        dir,
        &page(
            "scalelab bench comparison",
            &text,
            &[
                ("Latency percentiles", percentiles),
                ("Requests per second", rps),
                ("p99 over time", p99),
            ],
        ),
    )
}
