//! `kubectl quorate logs`: the logs of a group's members, interleaved by time (pure: the lines
//! come from `cluster`, read with `timestamps=true`, which prefixes each with its RFC 3339 time).

use jiff::Timestamp;

/// Where a line was written: a pod and one of its containers.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Source {
    pub pod: String,
    pub container: String,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.pod, self.container)
    }
}

/// One line of a container's log, split into the time the kubelet stamped and the text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub at: Option<Timestamp>,
    pub text: String,
}

/// Splits a line read with `timestamps=true`; a line without a time (it should not happen) is
/// kept whole, without a time.
pub fn parse_line(line: &str) -> LogLine {
    let line = line.trim_end_matches(['\r', '\n']);
    match line.split_once(' ') {
        Some((stamp, text)) => match stamp.parse::<Timestamp>() {
            Ok(at) => LogLine {
                at: Some(at),
                text: text.to_owned(),
            },
            Err(_) => LogLine {
                at: None,
                text: line.to_owned(),
            },
        },
        None => match line.parse::<Timestamp>() {
            // An empty line: only the time.
            Ok(at) => LogLine {
                at: Some(at),
                text: String::new(),
            },
            Err(_) => LogLine {
                at: None,
                text: line.to_owned(),
            },
        },
    }
}

/// The time of the last stamped line of a log (where following it picks up).
pub fn last_time(text: &str) -> Option<Timestamp> {
    text.lines().rev().find_map(|l| parse_line(l).at)
}

/// A line as printed: its time (milliseconds, UTC), its source, its text.
pub fn render(source: &Source, line: &LogLine) -> String {
    let at = line.at.map_or_else(
        || "-".repeat(24),
        |t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
    );
    format!("{at} {source} {}", line.text)
}

/// The lines of every source in one sequence ordered by time; equal times keep each source's
/// order (a line without a time goes with the line before it), then go by source.
pub fn interleave(logs: Vec<(Source, String)>) -> Vec<String> {
    let mut lines: Vec<(Timestamp, &Source, usize, LogLine)> = Vec::new();
    for (source, text) in &logs {
        let mut last = Timestamp::MIN;
        for (i, raw) in text.lines().enumerate() {
            let line = parse_line(raw);
            last = line.at.unwrap_or(last);
            lines.push((last, source, i, line));
        }
    }
    lines.sort_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
    lines
        .into_iter()
        .map(|(_, source, _, line)| render(source, &line))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(pod: &str, container: &str) -> Source {
        Source {
            pod: pod.into(),
            container: container.into(),
        }
    }

    #[test]
    fn lines_of_all_sources_come_out_in_time_order() {
        let out = interleave(vec![
            (
                source("db-0", "quorate-agent"),
                "2026-12-07T10:00:00.100000000Z appointed\n2026-12-07T10:00:00.300000000Z lease renewed\n".into(),
            ),
            (
                source("db-1", "app"),
                "2026-12-07T10:00:00.200000000Z ready\nno time here\n2026-12-07T10:00:00.050000000Z clock went back\n".into(),
            ),
        ]);
        assert_eq!(
            out,
            [
                "2026-12-07T10:00:00.050Z db-1/app clock went back",
                "2026-12-07T10:00:00.100Z db-0/quorate-agent appointed",
                "2026-12-07T10:00:00.200Z db-1/app ready",
                "------------------------ db-1/app no time here",
                "2026-12-07T10:00:00.300Z db-0/quorate-agent lease renewed",
            ]
        );
    }

    #[test]
    fn a_line_is_split_into_its_time_and_text() {
        let line = parse_line("2026-12-07T10:00:00.123456789Z {\"level\":\"info\"} x y\n");
        assert_eq!(line.text, "{\"level\":\"info\"} x y");
        assert_eq!(
            line.at.map(|t| t.to_string()),
            Some("2026-12-07T10:00:00.123456789Z".to_owned())
        );
        assert_eq!(parse_line("2026-12-07T10:00:00Z").text, "");
        assert_eq!(parse_line("plain text").at, None);
        assert_eq!(parse_line("").text, "");
        assert_eq!(
            last_time("2026-12-07T10:00:01Z a\n2026-12-07T10:00:02Z b\nno time\n"),
            Some("2026-12-07T10:00:02Z".parse().expect("time"))
        );
        assert_eq!(last_time(""), None);
    }
}
