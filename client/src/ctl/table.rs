//! The ASCII tables of etcdctl's `-w table` output, rendered the way the
//! tablewriter version vendored by etcd 3.4 renders them (centered upper-case
//! headers, right-aligned cells, cells wider than 30 columns wrapped at
//! spaces with minimal raggedness).

/// Cells longer than this are wrapped at spaces (tablewriter's MAX_ROW_WIDTH).
const MAX_CELL_WIDTH: usize = 30;

/// tablewriter's penalty for lines that stay longer than the limit.
const TOO_LONG_PENALTY: i64 = 100_000;

/// Renders `rows` under `headers`; every row has one cell per header.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    // Column widths grow as cells are added, and each cell is wrapped to the
    // width its column has at that point, as tablewriter does it.
    let mut widths: Vec<usize> = headers
        .iter()
        .map(|h| width(h).min(MAX_CELL_WIDTH))
        .collect();
    let mut table = Vec::with_capacity(rows.len());
    for row in rows {
        let mut cells = Vec::with_capacity(row.len());
        for (col, cell) in row.iter().enumerate() {
            let w = width(cell).min(MAX_CELL_WIDTH);
            if widths[col] < w || widths[col] == 0 {
                widths[col] = w;
            }
            let lines = wrap(cell, widths[col]);
            let widest = lines.iter().map(|l| width(l)).max().unwrap_or(0);
            widths[col] = widths[col].max(widest);
            cells.push(lines);
        }
        table.push(cells);
    }

    let mut out = String::new();
    let border = {
        let mut line = String::from("+");
        for w in &widths {
            line.push_str(&"-".repeat(w + 2));
            line.push('+');
        }
        line.push('\n');
        line
    };
    out.push_str(&border);
    out.push('|');
    for (header, w) in headers.iter().zip(&widths) {
        let title = header.replace(['_', '.'], " ").trim().to_uppercase();
        out.push_str(&format!(" {} |", pad_center(&title, *w)));
    }
    out.push('\n');
    out.push_str(&border);
    for cells in &table {
        let height = cells.iter().map(Vec::len).max().unwrap_or(0);
        for line in 0..height {
            for (lines, w) in cells.iter().zip(&widths) {
                // tablewriter fills short cells with two spaces.
                let text = lines.get(line).map_or("  ", String::as_str);
                out.push_str(&format!("| {} ", pad_left(text, *w)));
            }
            out.push_str("|\n");
        }
    }
    out.push_str(&border);
    out
}

/// Display width; etcd's values are ASCII, so characters are counted.
fn width(s: &str) -> usize {
    s.chars().count()
}

fn pad_left(s: &str, width: usize) -> String {
    format!("{}{s}", " ".repeat(width.saturating_sub(self::width(s))))
}

fn pad_center(s: &str, width: usize) -> String {
    let gap = width.saturating_sub(self::width(s));
    let left = gap / 2;
    format!("{}{s}{}", " ".repeat(left), " ".repeat(gap - left))
}

/// tablewriter's `WrapString`: splits `s` at spaces into lines of at most
/// `limit` columns (or the longest word), minimising the sum of squared
/// slack over all lines.
fn wrap(s: &str, limit: usize) -> Vec<String> {
    let text = s.replace('\n', " ");
    let words: Vec<&str> = text.split(' ').collect();
    let limit = words.iter().map(|w| w.len()).fold(limit, usize::max) as i64;
    let n = words.len();
    let lens: Vec<i64> = words.iter().map(|w| w.chars().count() as i64).collect();
    // Length of words[i..=j] joined with single spaces.
    let span = |i: usize, j: usize| lens[i..=j].iter().sum::<i64>() + (j - i) as i64;

    let mut cost = vec![i64::from(i32::MAX); n];
    let mut next_break = vec![n; n];
    for i in (0..n).rev() {
        if span(i, n - 1) <= limit {
            cost[i] = 0;
            next_break[i] = n;
            continue;
        }
        for j in i + 1..n {
            let len = span(i, j - 1);
            let slack = limit - len;
            let mut c = slack * slack + cost[j];
            if len > limit {
                c += TOO_LONG_PENALTY;
            }
            if c < cost[i] {
                cost[i] = c;
                next_break[i] = j;
            }
        }
    }
    let mut lines = Vec::new();
    let mut i = 0;
    while i < n {
        lines.push(words[i..next_break[i]].join(" "));
        i = next_break[i];
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_tablewriter() {
        let rows = vec![vec![
            "127.0.0.1:2379".to_string(),
            "true".to_string(),
            String::new(),
        ]];
        let expected = "\
+----------------+-----------+--------+
|    ENDPOINT    | IS LEADER | ERRORS |
+----------------+-----------+--------+
| 127.0.0.1:2379 |      true |        |
+----------------+-----------+--------+
";
        assert_eq!(
            render(&["endpoint", "is leader", "errors"], &rows),
            expected
        );
    }

    #[test]
    fn wraps_long_cells_at_spaces() {
        let cell = "memberID:1 alarm:NOSPACE, memberID:2 alarm:CORRUPT".to_string();
        let out = render(&["errors"], &[vec![cell]]);
        let expected = "\
+--------------------------------+
|             ERRORS             |
+--------------------------------+
|      memberID:1 alarm:NOSPACE, |
|       memberID:2 alarm:CORRUPT |
+--------------------------------+
";
        assert_eq!(out, expected);
    }

    #[test]
    fn long_words_widen_the_column() {
        let url = "http://127.0.0.1:2380,http://10.0.0.1:2380".to_string();
        assert_eq!(wrap(&url, 30), vec![url.clone()]);
    }
}
