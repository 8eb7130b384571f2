//! Tables for people (`db inspect`): each column as wide as its widest cell and, on a
//! terminal of known width, narrowed to fit it, long cells cut with an ellipsis. Off a
//! terminal (a pipe, a file) nothing is cut: whoever reads that may need every byte of a
//! name, and `--json` is there for scripts. Sizes are in binary units, as the client's
//! progress bars show them.

use std::io::IsTerminal;

/// The narrowest a cut column gets (or its title, if longer).
const MIN_CUT_WIDTH: usize = 8;
/// Between two columns.
const GAP: &str = "  ";
/// Marks a cut cell.
const ELLIPSIS: char = '…';

/// A column's title, and whether it may be narrowed (names, paths and ids may; sizes,
/// dates and yes/no may not). With every column that may be narrowed at its narrowest, a
/// table is about 70 columns wide at most.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    title: &'static str,
    cuts: bool,
}

/// A column that keeps its width.
pub const fn fixed(title: &'static str) -> Column {
    Column { title, cuts: false }
}

/// A column that may be narrowed on a narrow terminal.
pub const fn cut(title: &'static str) -> Column {
    Column { title, cuts: true }
}

/// The width of the terminal stdout is, if it is one and its width is known: the
/// terminal's own size, else `COLUMNS`.
pub fn terminal_width() -> Option<usize> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    securexfer::sys::stdout_terminal_width()
        .or_else(|| std::env::var("COLUMNS").ok()?.trim().parse().ok().filter(|&n: &usize| n > 0))
}

/// `bytes` for a person ("1.50 MiB"), or as a plain number when `raw`.
pub fn size(bytes: u64, raw: bool) -> String {
    if raw { bytes.to_string() } else { indicatif::HumanBytes(bytes).to_string() }
}

/// The table's lines: titles, then one line per row; within `width` columns if given
/// (as far as the fixed columns allow).
pub fn render(columns: &[Column], rows: &[Vec<String>], width: Option<usize>) -> Vec<String> {
    let mut widths: Vec<usize> = columns.iter().map(|c| c.title.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    if let Some(width) = width {
        fit(columns, &mut widths, width);
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> =
            cells.iter().zip(&widths).map(|(cell, &w)| format!("{:<w$}", clip(cell, w))).collect();
        parts.join(GAP).trim_end().to_owned()
    };
    let mut lines = vec![line(columns.iter().map(|c| c.title).collect())];
    lines.extend(rows.iter().map(|row| line(row.iter().map(String::as_str).collect())));
    lines
}

/// Narrows the widest column that may be cut, one character at a time, until the table
/// fits `width` or none can be cut further.
fn fit(columns: &[Column], widths: &mut [usize], width: usize) {
    let total = |widths: &[usize]| widths.iter().sum::<usize>() + GAP.len() * (widths.len() - 1);
    while total(widths) > width {
        let widest = (0..columns.len())
            .filter(|&i| {
                let column = columns[i];
                column.cuts && widths[i] > MIN_CUT_WIDTH.max(column.title.chars().count())
            })
            .max_by_key(|&i| widths[i]);
        match widest {
            Some(i) => widths[i] -= 1,
            None => break,
        }
    }
}

/// `cell` in at most `width` characters, its end replaced by an ellipsis if cut.
fn clip(cell: &str, width: usize) -> String {
    if cell.chars().count() <= width {
        return cell.to_owned();
    }
    let mut out: String = cell.chars().take(width.saturating_sub(1)).collect();
    out.push(ELLIPSIS);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<Vec<String>> {
        vec![vec!["alice".into(), "a".repeat(100), "1.50 MiB".into()]]
    }

    const COLUMNS: [Column; 3] = [fixed("CLIENT"), cut("FILE NAME"), fixed("SIZE")];

    #[test]
    fn without_a_width_nothing_is_cut() {
        let lines = render(&COLUMNS, &rows(), None);
        assert!(lines[1].contains(&"a".repeat(100)), "{lines:?}");
        assert!(!lines[1].contains(ELLIPSIS));
    }

    #[test]
    fn on_a_narrow_terminal_long_names_are_cut_with_an_ellipsis_to_fit() {
        for width in [40, 60, 80] {
            let lines = render(&COLUMNS, &rows(), Some(width));
            for line in &lines {
                assert!(line.chars().count() <= width, "{width}: {line:?}");
            }
            assert!(lines[1].contains(ELLIPSIS) && lines[1].ends_with("1.50 MiB"), "{lines:?}");
            assert!(lines[0].starts_with("CLIENT  FILE NAME"), "titles are whole: {lines:?}");
        }
    }

    #[test]
    fn fixed_columns_are_never_cut_even_when_the_table_cannot_fit() {
        let lines = render(&COLUMNS, &rows(), Some(10));
        assert_eq!(lines[1], "alice   aaaaaaaa…  1.50 MiB", "{lines:?}");
    }

    #[test]
    fn sizes_are_binary_units_unless_raw() {
        assert_eq!(size(1536 * 1024, false), "1.50 MiB");
        assert_eq!(size(512, false), "512 B");
        assert_eq!(size(1536 * 1024, true), "1572864");
    }
}
