//! Multi-step arithmetic word problems in plain English, each with a worked chain of thought and
//! a last line `#### <integer>`: the synthetic reasoning task the reference models learn.
//!
//! Everything is a pure function of (config, seed, index). Train and test are disjoint by
//! construction: a problem belongs to the split its question's hash names, so no question can
//! appear in both, whatever the seeds.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::CounterRng;

/// Difficulty knobs of the generator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArithConfig {
    /// Fewest operations per problem.
    pub min_steps: usize,
    /// Most operations per problem.
    pub max_steps: usize,
    /// Largest starting quantity.
    pub max_start: i64,
    /// Largest number added or taken away in one step.
    pub max_operand: i64,
    /// Chance of each distractor sentence (a fact the answer does not use), 0 to 1.
    pub distractor_rate: f64,
    /// Write each run of steps that commute (numbers added or taken away; doublings and
    /// triplings) in a random order in the worked solution, so a question has several valid
    /// solutions. The questions and answers are the same as without it.
    #[serde(default)]
    pub any_order: bool,
}

impl Default for ArithConfig {
    fn default() -> Self {
        Self {
            min_steps: 2,
            max_steps: 4,
            max_start: 30,
            max_operand: 15,
            distractor_rate: 0.3,
            any_order: false,
        }
    }
}

impl ArithConfig {
    /// Checks the knobs: 1 ≤ min_steps ≤ max_steps, max_start ≥ 2, max_operand ≥ 1,
    /// distractor_rate in [0, 1].
    pub fn validate(&self) -> Result<()> {
        let fail = |m: &str| Err(Error::Dataset(m.to_string()));
        if self.min_steps == 0 || self.min_steps > self.max_steps {
            return fail("need 1 ≤ min steps ≤ max steps");
        }
        if self.max_start < 2 || self.max_operand < 1 {
            return fail("need max start ≥ 2 and max operand ≥ 1");
        }
        if !(0.0..=1.0).contains(&self.distractor_rate) {
            return fail("the distractor rate must lie in [0, 1]");
        }
        Ok(())
    }
}

/// Which half of the task a problem belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Split {
    Train,
    Test,
}

/// One problem: the question, a worked solution ending in `#### <answer>`, and the answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub question: String,
    pub solution: String,
    pub answer: i64,
}

const NAMES: [(&str, &str); 12] = [
    ("Mia", "She"),
    ("Liam", "He"),
    ("Ava", "She"),
    ("Noah", "He"),
    ("Zoe", "She"),
    ("Omar", "He"),
    ("Lena", "She"),
    ("Ravi", "He"),
    ("Emma", "She"),
    ("Yuki", "She"),
    ("Tom", "He"),
    ("Sara", "She"),
];
const ITEMS: [&str; 10] = [
    "shells", "apples", "stickers", "marbles", "coins", "books", "cards", "pencils", "stamps",
    "cookies",
];
const RELATIVES: [&str; 4] = ["brother", "sister", "friend", "cousin"];
/// The words of the templates (besides names, pronouns, items and relatives).
const TEMPLATE_WORDS: [&str; 25] = [
    "has", "gives", "away", "doubles", "triples", "the", "number", "of", "half", "a", "third",
    "quarter", "fifth", "finds", "buys", "gets", "more", "Then", "After", "that", "Next", "How",
    "many", "does", "have",
];

/// Every word the generator writes (letters only, sorted), so a tokenizer can keep them whole.
pub fn vocabulary() -> Vec<String> {
    let mut words: Vec<String> = NAMES
        .iter()
        .flat_map(|(name, pronoun)| {
            [
                name.to_string(),
                pronoun.to_string(),
                pronoun.to_lowercase(),
            ]
        })
        .chain(
            ITEMS
                .iter()
                .chain(&RELATIVES)
                .chain(&TEMPLATE_WORDS)
                .map(|w| w.to_string()),
        )
        .chain(["now".to_string()])
        .collect();
    words.sort();
    words.dedup();
    words
}

/// Quantities stay below this, so the numbers the models must handle stay small.
const MAX_VALUE: i64 = 999;

/// Draws from the counter-based generator for one problem.
struct Draws {
    rng: CounterRng,
    stream: u64,
    counter: u64,
}

impl Draws {
    /// A uniform integer in lo..=hi.
    fn int(&mut self, lo: i64, hi: i64) -> i64 {
        let u = self.rng.uniform(self.stream, self.counter);
        self.counter += 1;
        lo + ((u * (hi - lo + 1) as f64) as i64).min(hi - lo)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.int(0, items.len() as i64 - 1) as usize]
    }

    fn chance(&mut self, p: f64) -> bool {
        let u = self.rng.uniform(self.stream, self.counter);
        self.counter += 1;
        u < p
    }
}

/// FNV-1a, a stable hash that decides a question's split.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The split a question belongs to: one in five questions is a test question.
pub fn split_of(question: &str) -> Split {
    if fnv1a(question).is_multiple_of(5) {
        Split::Test
    } else {
        Split::Train
    }
}

/// Mixed into the seed for the draws that order a solution's steps (`ArithConfig::any_order`).
const ORDER_STREAM: u64 = 0x6f72_6465_7273;

/// One operation of a problem, as its worked solution computes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// Add k (k < 0: give k away).
    Add(i64),
    /// Multiply by k (2 or 3).
    Times(i64),
    /// Give away one k-th (the value is divisible by k).
    GiveAwayPart(i64),
}

impl Op {
    /// The quantity after this step.
    fn apply(self, value: i64) -> i64 {
        match self {
            Op::Add(k) => value + k,
            Op::Times(k) => value * k,
            Op::GiveAwayPart(k) => value - value / k,
        }
    }

    /// The solution line(s) for this step applied to `value`.
    fn line(self, value: i64) -> String {
        let next = self.apply(value);
        match self {
            Op::Add(k) if k < 0 => format!("{value} - {} = {next}", -k),
            Op::Add(k) => format!("{value} + {k} = {next}"),
            Op::Times(k) => format!("{value} * {k} = {next}"),
            Op::GiveAwayPart(k) => format!(
                "{value} / {k} = {}\n{value} - {} = {next}",
                value / k,
                value / k
            ),
        }
    }

    /// Steps of one class commute with each other: additions with additions, products with
    /// products.
    fn commutes_with(self, other: Op) -> bool {
        matches!(
            (self, other),
            (Op::Add(_), Op::Add(_)) | (Op::Times(_), Op::Times(_))
        )
    }
}

/// The worked solution's lines (without the `####` line) for `ops` applied from `start`.
fn worked_solution(start: i64, ops: &[Op]) -> String {
    let mut value = start;
    let mut lines = Vec::with_capacity(ops.len());
    for op in ops {
        lines.push(op.line(value));
        value = op.apply(value);
    }
    lines.join("\n")
}

/// Puts each maximal run of commuting steps in a random order (Fisher–Yates), keeping the
/// original order of a run where the new one would take the quantity below zero on the way.
/// Every run ends on the same quantity in any order, so the steps after it are unchanged.
fn shuffle_commuting_runs(start: i64, ops: &mut [Op], d: &mut Draws) {
    let mut value = start;
    let mut i = 0;
    while i < ops.len() {
        let mut end = i + 1;
        while end < ops.len() && ops[i].commutes_with(ops[end]) {
            end += 1;
        }
        let mut run = ops[i..end].to_vec();
        for j in (1..run.len()).rev() {
            run.swap(j, d.int(0, j as i64) as usize);
        }
        let stays_whole = run
            .iter()
            .scan(value, |v, op| {
                *v = op.apply(*v);
                Some(*v)
            })
            .all(|v| v >= 0);
        if stays_whole {
            ops[i..end].copy_from_slice(&run);
        }
        value = ops[i..end].iter().fold(value, |v, op| op.apply(v));
        i = end;
    }
}

/// Candidate problem number `index` for `seed` (before the split filter).
fn candidate(config: &ArithConfig, seed: u64, index: u64) -> Problem {
    let mut d = Draws {
        rng: CounterRng { seed },
        stream: index,
        counter: 0,
    };
    let (name, pronoun) = *d.pick(&NAMES);
    let item = *d.pick(&ITEMS);
    let start = d.int(2, config.max_start.max(2));
    let mut value = start;
    let steps = d.int(
        config.min_steps as i64,
        config.max_steps.max(config.min_steps) as i64,
    );
    let mut sentences = vec![format!("{name} has {value} {item}.")];
    let mut ops = Vec::new();
    for step in 0..steps {
        let then = if step == 0 {
            ""
        } else {
            *d.pick(&["Then ", "After that, ", "Next, "])
        };
        let subject = if then.is_empty() {
            pronoun.to_string()
        } else {
            pronoun.to_lowercase()
        };
        let divisors: Vec<i64> = [2, 3, 4, 5]
            .into_iter()
            .filter(|k| value % k == 0 && value > 0)
            .collect();
        let kind = d.int(0, 3);
        let (sentence, op) = match kind {
            1 if value > 1 => {
                let k = d.int(1, value.min(config.max_operand).max(1));
                (
                    format!("{then}{subject} gives away {k} {item}."),
                    Op::Add(-k),
                )
            }
            2 if value * 2 <= MAX_VALUE => {
                let (k, word) = match *d.pick(&[(2, "doubles"), (3, "triples")]) {
                    (3, _) if value * 3 > MAX_VALUE => (2, "doubles"),
                    pair => pair,
                };
                (
                    format!("{then}{subject} {word} the number of {item}."),
                    Op::Times(k),
                )
            }
            3 if !divisors.is_empty() => {
                let k = *d.pick(&divisors);
                let part = ["", "", "half", "a third", "a quarter", "a fifth"][k as usize];
                (
                    format!("{then}{subject} gives away {part} of the {item}."),
                    Op::GiveAwayPart(k),
                )
            }
            _ => {
                let k = d.int(1, config.max_operand.max(1));
                let verb = *d.pick(&["finds", "buys", "gets"]);
                (
                    format!("{then}{subject} {verb} {k} more {item}."),
                    Op::Add(k),
                )
            }
        };
        sentences.push(sentence);
        ops.push(op);
        value = op.apply(value);
        if d.chance(config.distractor_rate) {
            let relative = *d.pick(&RELATIVES);
            let other = *d.pick(&ITEMS);
            let n = d.int(2, config.max_start.max(2));
            sentences.push(format!("{name}'s {relative} has {n} {other}."));
        }
    }
    if config.any_order {
        // Drawn from a stream of their own, so the question is the one written without it.
        let mut order = Draws {
            rng: CounterRng {
                seed: seed ^ ORDER_STREAM,
            },
            stream: index,
            counter: 0,
        };
        shuffle_commuting_runs(start, &mut ops, &mut order);
    }
    let work = worked_solution(start, &ops);
    let question = format!(
        "{} How many {item} does {name} have now?",
        sentences.join(" ")
    );
    let solution = format!("{work}\n#### {value}");
    Problem {
        question,
        solution,
        answer: value,
    }
}

/// `count` problems of `split`, determined by (config, seed). Candidates whose question hashes
/// to the other split are skipped, so train and test never share a question.
pub fn generate(config: &ArithConfig, split: Split, seed: u64, count: usize) -> Vec<Problem> {
    let mut out = Vec::with_capacity(count);
    let mut seen = std::collections::HashSet::new();
    let mut index = 0u64;
    while out.len() < count {
        let p = candidate(config, seed, index);
        index += 1;
        if split_of(&p.question) == split && seen.insert(p.question.clone()) {
            out.push(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::answer::{Extraction, extract_answer};

    /// Recomputes a solution line by line: each `a op b = c` must hold.
    fn check_work(solution: &str) -> i64 {
        let mut last = 0;
        for line in solution.lines().filter(|l| !l.starts_with("####")) {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let (a, op, b, c): (i64, &str, i64, i64) = (
                parts[0].parse().unwrap(),
                parts[1],
                parts[2].parse().unwrap(),
                parts[4].parse().unwrap(),
            );
            let expect = match op {
                "+" => a + b,
                "-" => a - b,
                "*" => a * b,
                "/" => {
                    assert_eq!(a % b, 0, "{line}");
                    a / b
                }
                _ => panic!("unknown op in {line}"),
            };
            assert_eq!(expect, c, "{line}");
            last = c;
        }
        last
    }

    #[test]
    fn solutions_are_correct_and_end_with_the_answer() {
        for p in generate(&ArithConfig::default(), Split::Train, 1, 300) {
            assert_eq!(
                check_work(&p.solution),
                p.answer,
                "{}\n{}",
                p.question,
                p.solution
            );
            assert!(p.answer >= 0 && p.answer <= MAX_VALUE * 3);
            let extracted = extract_answer(&p.solution, Extraction::Strict).unwrap();
            assert_eq!(extracted, p.answer.to_string());
            assert!(p.question.ends_with("have now?"));
        }
    }

    #[test]
    fn vocabulary_covers_every_word_written() {
        let vocabulary = vocabulary();
        let config = ArithConfig {
            distractor_rate: 0.5,
            ..Default::default()
        };
        for p in generate(&config, Split::Train, 4, 500) {
            for word in p.question.split(|c: char| !c.is_ascii_alphabetic()) {
                assert!(
                    word.is_empty() || word == "s" || vocabulary.iter().any(|v| v == word),
                    "{word:?} in {}",
                    p.question
                );
            }
        }
    }

    #[test]
    fn determined_by_the_seed() {
        let c = ArithConfig::default();
        assert_eq!(
            generate(&c, Split::Test, 7, 20),
            generate(&c, Split::Test, 7, 20)
        );
        assert_ne!(
            generate(&c, Split::Test, 7, 20),
            generate(&c, Split::Test, 8, 20)
        );
    }

    #[test]
    fn splits_are_disjoint_whatever_the_seeds() {
        let c = ArithConfig::default();
        let train: std::collections::HashSet<String> = generate(&c, Split::Train, 1, 3000)
            .into_iter()
            .map(|p| p.question)
            .collect();
        for seed in [1, 2] {
            for p in generate(&c, Split::Test, seed, 500) {
                assert!(!train.contains(&p.question));
                assert_eq!(split_of(&p.question), Split::Test);
            }
        }
    }

    #[test]
    fn knobs_change_the_problems() {
        let easy = ArithConfig {
            min_steps: 1,
            max_steps: 1,
            distractor_rate: 0.0,
            ..Default::default()
        };
        for p in generate(&easy, Split::Train, 3, 50) {
            assert!(
                p.solution
                    .lines()
                    .filter(|l| !l.starts_with("####"))
                    .count()
                    <= 2
            );
            assert!(
                !p.question.contains("'s "),
                "no distractors: {}",
                p.question
            );
        }
        let noisy = ArithConfig {
            distractor_rate: 1.0,
            ..Default::default()
        };
        assert!(
            generate(&noisy, Split::Train, 3, 20)
                .iter()
                .all(|p| p.question.contains("'s "))
        );
    }

    #[test]
    fn any_order_keeps_the_questions_and_varies_the_solutions() {
        let one = ArithConfig::default();
        let any = ArithConfig {
            any_order: true,
            ..Default::default()
        };
        let fixed = generate(&one, Split::Train, 5, 400);
        let shuffled = generate(&any, Split::Train, 5, 400);
        let mut reordered = 0;
        for (a, b) in fixed.iter().zip(&shuffled) {
            assert_eq!((&a.question, a.answer), (&b.question, b.answer));
            assert_eq!(check_work(&b.solution), b.answer, "{}", b.solution);
            let sorted = |s: &str| {
                let mut ops: Vec<String> = s
                    .lines()
                    .filter(|l| !l.starts_with("####"))
                    .map(|l| l.split_whitespace().skip(1).take(2).collect())
                    .collect();
                ops.sort();
                ops
            };
            assert_eq!(
                sorted(&a.solution),
                sorted(&b.solution),
                "{}\n{}",
                a.solution,
                b.solution
            );
            reordered += usize::from(a.solution != b.solution);
        }
        // About half the problems have two commuting steps in a row; half of those swap.
        assert!(
            (40..200).contains(&reordered),
            "{reordered} of 400 reordered"
        );
    }
}
