//! The report of a multi-run experiment (`scalelab bench scenario`): plain data ([`Experiment`],
//! [`Section`], [`Chart`], [`ScoreRow`]) rendered into one self-contained HTML page with inline SVG
//! charts. The runs themselves, and the topologies they need, are the caller's business: this module
//! only knows numbers and text.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::Error;
use crate::html::{bar_chart, escape, line_chart};

/// Size of a section's charts, in pixels.
const SECTION_CHART: (u32, u32) = (760, 340);
/// Size of a scorecard row's chart, in pixels.
const SCORE_CHART: (u32, u32) = (420, 240);

/// A chart described by its numbers.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Chart {
    /// One slot per category, one bar per group in each slot.
    Bars {
        /// Caption.
        title: String,
        /// Label of the value axis.
        y_desc: String,
        /// The slots, left to right.
        categories: Vec<String>,
        /// `(name, one value per category)`.
        groups: Vec<(String, Vec<f64>)>,
    },
    /// Lines of `(x, y)` points.
    Lines {
        /// Caption.
        title: String,
        /// Label of the x axis.
        x_desc: String,
        /// Label of the y axis.
        y_desc: String,
        /// `(name, points)`.
        series: Vec<(String, Vec<(f64, f64)>)>,
    },
}

impl Chart {
    /// A bar chart with a single group.
    pub fn bars(title: &str, y_desc: &str, bars: &[(String, f64)]) -> Self {
        Chart::Bars {
            title: title.to_owned(),
            y_desc: y_desc.to_owned(),
            categories: bars.iter().map(|b| b.0.clone()).collect(),
            groups: vec![(y_desc.to_owned(), bars.iter().map(|b| b.1).collect())],
        }
    }

    /// The chart as an SVG document of `size` pixels.
    pub fn svg(&self, size: (u32, u32)) -> Result<String, Error> {
        match self {
            Chart::Bars {
                title,
                y_desc,
                categories,
                groups,
            } => bar_chart(size, title, y_desc, categories, groups),
            Chart::Lines {
                title,
                x_desc,
                y_desc,
                series,
            } => line_chart(size, title, x_desc, y_desc, series),
        }
    }
}

/// A table of text cells.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Table {
    /// Column headings.
    pub header: Vec<String>,
    /// Rows, each as many cells as `header`.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headings and no rows yet.
    pub fn new<S: AsRef<str>>(header: &[S]) -> Self {
        Table {
            header: header.iter().map(|h| h.as_ref().to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// The table as aligned plain text (for the terminal).
    pub fn to_text(&self) -> String {
        if self.header.is_empty() {
            return String::new();
        }
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, &w)| format!("{cell:<w$}"))
                .collect();
            let _ = writeln!(out, "  {}", line.join("  ").trim_end());
        }
        out
    }
}

/// One experiment's part of the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Section {
    /// Heading, e.g. `Load balancing`.
    pub title: String,
    /// What was done, in one or two sentences.
    pub setup: String,
    /// The figures.
    pub table: Table,
    /// Findings, one sentence each (`0 client-visible errors while gateway-1 was killed`).
    pub findings: Vec<String>,
    /// Charts, in order.
    pub charts: Vec<Chart>,
    /// The command that reproduces the section.
    pub command: String,
}

/// One tactic of the closing scorecard.
#[derive(Debug, Clone, Serialize)]
pub struct ScoreRow {
    /// `load balancing`, `caching`, `scaling out`, ...
    pub tactic: String,
    /// The measured gain in words, e.g. `cache hit 35x faster than miss (p50)`.
    pub gain: String,
    /// The chart that shows it.
    pub chart: Option<Chart>,
    /// The command that reproduces it.
    pub command: String,
}

/// A whole experiment report: sections, then the scorecard.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Experiment {
    /// Page title.
    pub title: String,
    /// A paragraph under the title (machine, date, how long it ran).
    pub intro: String,
    /// One per experiment run.
    pub sections: Vec<Section>,
    /// One row per tactic; rendered last, under "Tactic scorecard".
    pub scorecard: Vec<ScoreRow>,
}

impl Experiment {
    /// The page as self-contained HTML (inline SVG, no scripts, no external files).
    pub fn to_html(&self) -> Result<String, Error> {
        let mut html = String::new();
        let _ = write!(
            html,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
             <style>body{{font-family:sans-serif;margin:2em;max-width:960px}}\
             table{{border-collapse:collapse;margin:1em 0}}\
             td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}\
             code{{background:#f6f6f6;padding:2px 4px}}section{{margin:2.5em 0}}\
             .chart svg{{max-width:100%;height:auto}}.scorecard .chart svg{{width:420px}}</style></head>\n<body><h1>{t}</h1>\n<p>{i}</p>\n",
            t = escape(&self.title),
            i = escape(&self.intro)
        );
        if !self.sections.is_empty() {
            html.push_str("<ul>");
            for (n, s) in self.sections.iter().enumerate() {
                let _ = write!(html, "<li><a href=\"#s{n}\">{}</a></li>", escape(&s.title));
            }
            if !self.scorecard.is_empty() {
                html.push_str("<li><a href=\"#scorecard\">Tactic scorecard</a></li>");
            }
            html.push_str("</ul>\n");
        }
        for (n, s) in self.sections.iter().enumerate() {
            let _ = write!(
                html,
                "<section id=\"s{n}\"><h2>{}</h2>\n<p>{}</p>\n",
                escape(&s.title),
                escape(&s.setup)
            );
            if !s.table.header.is_empty() {
                html.push_str(&table_html(&s.table));
            }
            if !s.findings.is_empty() {
                html.push_str("<ul>");
                for f in &s.findings {
                    let _ = write!(html, "<li>{}</li>", escape(f));
                }
                html.push_str("</ul>\n");
            }
            for chart in &s.charts {
                let _ = writeln!(
                    html,
                    "<div class=\"chart\">{}</div>",
                    chart.svg(SECTION_CHART)?
                );
            }
            if !s.command.is_empty() {
                let _ = writeln!(
                    html,
                    "<p>Reproduce: <code>{}</code></p>",
                    escape(&s.command)
                );
            }
            html.push_str("</section>\n");
        }
        if !self.scorecard.is_empty() {
            html.push_str(
                "<section id=\"scorecard\"><h2>Tactic scorecard</h2>\n<table class=\"scorecard\">\
                 <tr><th>Tactic</th><th>Measured gain</th><th>Chart</th><th>Reproduce</th></tr>\n",
            );
            for row in &self.scorecard {
                let chart = match &row.chart {
                    Some(c) => c.svg(SCORE_CHART)?,
                    None => String::from("-"),
                };
                let _ = writeln!(
                    html,
                    "<tr><td>{}</td><td>{}</td><td class=\"chart\">{chart}</td><td><code>{}</code></td></tr>",
                    escape(&row.tactic),
                    escape(&row.gain),
                    escape(&row.command)
                );
            }
            html.push_str("</table></section>\n");
        }
        html.push_str("</body></html>\n");
        Ok(html)
    }

    /// Writes `dir/index.html`; returns its path.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, Error> {
        let html = self.to_html()?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join("index.html");
        std::fs::write(&path, html).map_err(|e| Error::io(&path, e))?;
        Ok(path)
    }
}

fn table_html(t: &Table) -> String {
    let mut html = String::from("<table><tr>");
    for h in &t.header {
        let _ = write!(html, "<th>{}</th>", escape(h));
    }
    html.push_str("</tr>\n");
    for row in &t.rows {
        html.push_str("<tr>");
        for cell in row {
            let _ = write!(html, "<td>{}</td>", escape(cell));
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</table>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Experiment {
        let mut table = Table::new(&["instances", "req/s"]);
        table.row(["1", "95.0"]);
        table.row(["3", "270.5"]);
        let chart = Chart::bars(
            "Throughput",
            "req/s",
            &[("1".into(), 95.0), ("3".into(), 270.5)],
        );
        Experiment {
            title: "scalelab <scenarios>".into(),
            intro: "on a 2-core machine".into(),
            sections: vec![Section {
                title: "Scaling out".into(),
                setup: "closed model".into(),
                table,
                findings: vec!["3 instances: 2.8x".into()],
                charts: vec![chart.clone()],
                command: "scalelab bench scenario scale".into(),
            }],
            scorecard: vec![ScoreRow {
                tactic: "scaling out".into(),
                gain: "3 instances: 2.8x throughput of 1".into(),
                chart: Some(chart),
                command: "scalelab bench scenario scale".into(),
            }],
        }
    }

    #[test]
    fn the_page_has_sections_charts_and_the_scorecard() {
        let html = sample().to_html().unwrap();
        assert!(html.contains("<title>scalelab &lt;scenarios&gt;</title>"));
        assert!(html.contains("<h2>Scaling out</h2>"));
        assert!(html.contains("<td>270.5</td>"));
        assert!(html.contains("<h2>Tactic scorecard</h2>"));
        assert!(html.contains("<td>3 instances: 2.8x throughput of 1</td>"));
        assert_eq!(
            html.matches("<svg").count(),
            2,
            "one section chart, one score chart"
        );
        assert!(html.contains("<rect"), "bars are drawn");
    }

    #[test]
    fn tables_align_as_text() {
        let mut t = Table::new(&["a", "bbb"]);
        t.row(["long cell", "1"]);
        assert_eq!(t.to_text(), "  a          bbb\n  long cell  1\n");
    }

    #[test]
    fn line_charts_render() {
        let c = Chart::Lines {
            title: "p99".into(),
            x_desc: "instances".into(),
            y_desc: "ms".into(),
            series: vec![("p99".into(), vec![(1.0, 40.0), (2.0, 30.0), (3.0, 25.0)])],
        };
        let svg = c.svg((400, 200)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("<polyline"),
            "{svg}"
        );
    }
}
