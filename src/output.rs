//! How read commands print: a table for people, JSON or YAML for programs (`-o`).

use std::fmt::Write as _;

use clap::{Args, ValueEnum};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
    /// The table's rows as comma-separated values, with a header line.
    Csv,
}

#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub format: Format,
}

/// Rows under headers, columns padded to their widest cell.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
    /// Lines printed under the table (not part of CSV output).
    footer: Vec<String>,
}

impl Table {
    pub fn new(headers: Vec<&'static str>) -> Self {
        Self {
            headers,
            rows: Vec::new(),
            footer: Vec::new(),
        }
    }

    pub fn footer(&mut self, line: String) {
        self.footer.push(line);
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let header_cells: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for cells in std::iter::once(&header_cells).chain(&self.rows) {
            let line: Vec<String> = cells
                .iter()
                .zip(&widths)
                // Padded by hand: a format width is limited to 65,535 and a cell may be longer.
                .map(|(cell, width)| {
                    let pad = width.saturating_sub(cell.chars().count());
                    format!("{cell}{}", " ".repeat(pad))
                })
                .collect();
            let _ = writeln!(out, "{}", line.join("  ").trim_end());
        }
        for line in &self.footer {
            let _ = writeln!(out, "{line}");
        }
        out
    }
}

impl Table {
    fn render_csv(&self) -> String {
        gust_api_types::csv(&self.headers, &self.rows)
    }
}

/// Prints `value` in the chosen format; `table` builds the table view only when needed.
pub fn print<T: Serialize>(
    format: Format,
    value: &T,
    table: impl FnOnce() -> Table,
) -> anyhow::Result<()> {
    match format {
        Format::Table => print!("{}", table().render()),
        Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Format::Yaml => print!("{}", serde_norway::to_string(value)?),
        Format::Csv => print!("{}", table().render_csv()),
    }
    Ok(())
}

/// How an enum value is written in JSON (`succeeded`, `final_status`), for a table cell.
pub fn label<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => text,
        Ok(other) => other.to_string(),
        Err(_) => "-".to_owned(),
    }
}

/// Unix milliseconds as an RFC 3339 time (UTC, to the second); `-` when absent.
pub fn time_ms(ms: Option<u64>) -> String {
    ms.map_or_else(
        || "-".to_owned(),
        |ms| {
            // humantime writes four-digit years only (and panics past them).
            const LAST_MS: u64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
            if ms > LAST_MS {
                return "after 9999".to_owned();
            }
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
            )
            .to_string()
        },
    )
}

/// Milliseconds as a short human duration.
pub fn duration_ms(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_columns() {
        let mut table = Table::new(vec!["NAME", "ENV"]);
        table.row(vec!["hello-world".into(), "python".into()]);
        table.row(vec!["f".into(), "node".into()]);
        assert_eq!(
            table.render(),
            "NAME         ENV\nhello-world  python\nf            node\n"
        );
    }

    #[test]
    fn a_huge_cell_and_a_far_time_do_not_panic() {
        let mut table = Table::new(vec!["CRON", "NEXT"]);
        table.row(vec!["1,".repeat(40_000), time_ms(Some(u64::MAX))]);
        let rendered = table.render();
        assert!(
            rendered.ends_with("  after 9999\n"),
            "{}",
            &rendered[rendered.len() - 40..]
        );
        assert_eq!(time_ms(Some(0)), "1970-01-01T00:00:00Z");
    }
}
