//! GSM8K's JSONL format, one `{"question": ..., "answer": ...}` object per line, where the answer
//! is a worked solution ending in `#### <number>`: read real GSM8K files, write our task's.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::task::answer::{Extraction, extract_answer};
use crate::task::arith::Problem;

/// One line of a GSM8K-style file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gsm8kRecord {
    pub question: String,
    /// The worked solution; its `#### n` line is the ground truth.
    pub answer: String,
}

impl Gsm8kRecord {
    /// The ground-truth answer (normalised), from the `#### n` line.
    pub fn final_answer(&self) -> Option<String> {
        extract_answer(&self.answer, Extraction::Strict)
    }
}

impl From<&Problem> for Gsm8kRecord {
    fn from(p: &Problem) -> Self {
        Self {
            question: p.question.clone(),
            answer: p.solution.clone(),
        }
    }
}

/// Parses JSONL text; blank lines are skipped, and a bad line is reported by its number.
pub fn read_jsonl(text: &str) -> Result<Vec<Gsm8kRecord>> {
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record: Gsm8kRecord = serde_json::from_str(line).map_err(|e| {
            Error::Dataset(format!(
                "line {}: not a {{\"question\", \"answer\"}} object: {e}",
                i + 1
            ))
        })?;
        if record.final_answer().is_none() {
            return Err(Error::Dataset(format!(
                "line {}: the answer has no `#### <number>` line",
                i + 1
            )));
        }
        records.push(record);
    }
    if records.is_empty() {
        return Err(Error::Dataset("the file holds no problems".into()));
    }
    Ok(records)
}

/// Writes records as JSONL, one object per line.
pub fn write_jsonl(records: &[Gsm8kRecord]) -> String {
    records
        .iter()
        .map(|r| serde_json::to_string(r).expect("strings serialise") + "\n")
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::arith::{ArithConfig, Split, generate};

    #[test]
    fn round_trip_through_jsonl() {
        let problems = generate(&ArithConfig::default(), Split::Test, 0, 5);
        let records: Vec<Gsm8kRecord> = problems.iter().map(Gsm8kRecord::from).collect();
        let back = read_jsonl(&write_jsonl(&records)).unwrap();
        assert_eq!(back, records);
        for (r, p) in back.iter().zip(&problems) {
            assert_eq!(r.final_answer(), Some(p.answer.to_string()));
        }
    }

    #[test]
    fn reads_real_gsm8k_lines() {
        let line = r#"{"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?", "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"}"#;
        let records = read_jsonl(line).unwrap();
        assert_eq!(records[0].final_answer().as_deref(), Some("72"));
    }

    #[test]
    fn bad_files_are_refused_with_the_line() {
        let err =
            read_jsonl("{\"question\": \"q\", \"answer\": \"#### 1\"}\nnot json").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = read_jsonl(r#"{"question": "q", "answer": "no marker"}"#).unwrap_err();
        assert!(err.to_string().contains("####"), "{err}");
        assert!(read_jsonl("\n\n").is_err());
    }
}
