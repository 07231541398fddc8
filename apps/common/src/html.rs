//! report.html beside report.md: the same text (headings, paragraphs, tables, lists, `code`),
//! with the pictures shown where a reader wants them, in one self-contained file that any
//! browser opens from the output folder.

use std::fmt::Write as _;

/// Escapes text for HTML.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Inline markdown of the reports: `code` spans and **bold**, the rest as text.
fn inline(s: &str) -> String {
    let mut out = String::new();
    for (k, part) in escape(s).split('`').enumerate() {
        if k % 2 == 1 {
            let _ = write!(out, "<code>{part}</code>");
        } else {
            let mut bold = false;
            for (j, piece) in part.split("**").enumerate() {
                if j > 0 {
                    out.push_str(if bold { "</b>" } else { "<b>" });
                    bold = !bold;
                }
                out.push_str(piece);
            }
            if bold {
                out.push_str("</b>");
            }
        }
    }
    out
}

fn cells(line: &str) -> Vec<&str> {
    let t = line.trim().trim_start_matches('|').trim_end_matches('|');
    t.split('|').map(str::trim).collect()
}

/// The report's markdown as HTML body elements.
pub fn markdown_to_html(md: &str) -> String {
    let mut out = String::new();
    let lines: Vec<&str> = md.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let t = line.trim();
        if t.is_empty() {
            i += 1;
        } else if let Some(h) = t.strip_prefix("## ") {
            let _ = writeln!(out, "<h2>{}</h2>", inline(h));
            i += 1;
        } else if let Some(h) = t.strip_prefix("# ") {
            let _ = writeln!(out, "<h1>{}</h1>", inline(h));
            i += 1;
        } else if t.starts_with('|') {
            out.push_str("<table>\n");
            let mut row = 0;
            while i < lines.len() && lines[i].trim().starts_with('|') {
                let c = cells(lines[i]);
                let separator = c
                    .iter()
                    .all(|x| !x.is_empty() && x.chars().all(|ch| "-: ".contains(ch)));
                if !separator {
                    let tag = if row == 0 { "th" } else { "td" };
                    out.push_str("<tr>");
                    for x in c {
                        let _ = write!(out, "<{tag}>{}</{tag}>", inline(x));
                    }
                    out.push_str("</tr>\n");
                    row += 1;
                }
                i += 1;
            }
            out.push_str("</table>\n");
        } else if t.starts_with("- ") {
            out.push_str("<ul>\n");
            while i < lines.len() && lines[i].trim().starts_with("- ") {
                let _ = writeln!(out, "<li>{}</li>", inline(&lines[i].trim()[2..]));
                i += 1;
            }
            out.push_str("</ul>\n");
        } else {
            let mut para = vec![t];
            i += 1;
            while i < lines.len() {
                let n = lines[i].trim();
                if n.is_empty() || n.starts_with('#') || n.starts_with('|') || n.starts_with("- ") {
                    break;
                }
                para.push(n);
                i += 1;
            }
            let _ = writeln!(out, "<p>{}</p>", inline(&para.join(" ")));
        }
    }
    out
}

/// A whole page: `title`, the pictures (caption, file name relative to the page) after the
/// first table, then the rest of the report.
pub fn page(title: &str, md: &str, pictures: &[(String, String)]) -> String {
    let body = markdown_to_html(md);
    let figures: String = pictures
        .iter()
        .map(|(caption, file)| {
            format!(
                "<figure><img src=\"{}\" alt=\"{}\"><figcaption>{}</figcaption></figure>\n",
                escape(file),
                escape(caption),
                inline(caption)
            )
        })
        .collect();
    // The pictures go right after the first table (the evaluation), before the details.
    let body = match body.find("</table>\n") {
        Some(k) => {
            let k = k + "</table>\n".len();
            format!("{}{figures}{}", &body[..k], &body[k..])
        }
        None => format!("{body}{figures}"),
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>\n\
body {{ font-family: 'DejaVu Sans', Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}\n\
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}\n\
th, td {{ border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: right; }}\n\
th {{ background: #eee; }} td:first-child, th:first-child {{ text-align: left; }}\n\
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; image-rendering: pixelated; border: 1px solid #ddd; }}\n\
figcaption {{ color: #555; font-size: 0.9em; }} code {{ background: #f3f3f3; padding: 0 0.2em; }}\n\
</style>\n</head>\n<body>\n{body}</body>\n</html>\n",
        escape(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_lists_and_code_become_html() {
        let md = "# Report\n\nA `x < y` and **bold**.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n- one\n- two\n";
        let h = page("t", md, &[("the curve".into(), "loss_curve.png".into())]);
        assert!(h.contains("<h1>Report</h1>"));
        assert!(
            h.contains("<p>A <code>x &lt; y</code> and <b>bold</b>.</p>"),
            "{h}"
        );
        assert!(
            h.contains("<tr><th>a</th><th>b</th></tr>\n<tr><td>1</td><td>2</td></tr>"),
            "{h}"
        );
        assert!(
            h.contains("</table>\n<figure><img src=\"loss_curve.png\""),
            "{h}"
        );
        assert!(h.contains("<li>one</li>\n<li>two</li>"));
    }
}
