//! LRA ListOps: the token vocabulary, expression evaluation, the TSV reader, and a seeded generator following LRA's rules.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{numbered_lines, utf8_text, DataError, SequenceSet, SequenceSetBuilder};

/// Token strings by id. Unlike the LRA reference code, `]` and `)` are kept: they carry the tree structure.
pub const VOCAB: &[&str] = &["<pad>", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "[MAX", "[MIN", "[MED", "[SM", "]", "(", ")"];
pub const PAD_ID: i64 = 0;
/// Id of digit 0; digit d has id DIGIT_BASE + d.
const DIGIT_BASE: i64 = 1;
const HEADER: &str = "Source\tTarget";
/// LRA's VALUE_P: the chance an argument is a nested operator rather than a digit.
const NESTED_OP_PROBABILITY: f64 = 0.25;
/// Smallest expression: an operator, two digits and `]`.
const MIN_EXPRESSION_LEN: usize = 4;
/// Rejection sampling gives up after this many tries per requested sample, so impossible settings cannot hang.
const ATTEMPTS_PER_SAMPLE: usize = 100_000;

pub fn vocab_size() -> usize {
    VOCAB.len()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    Max,
    Min,
    Median,
    SumMod10,
}

impl Operator {
    const ALL: [Operator; 4] = [Operator::Max, Operator::Min, Operator::Median, Operator::SumMod10];

    fn token(self) -> &'static str {
        match self {
            Operator::Max => "[MAX",
            Operator::Min => "[MIN",
            Operator::Median => "[MED",
            Operator::SumMod10 => "[SM",
        }
    }

    /// Applies the operator to a non-empty argument list.
    fn apply(self, args: &[i64]) -> i64 {
        match self {
            Operator::Max => args.iter().copied().max().unwrap_or(0),
            Operator::Min => args.iter().copied().min().unwrap_or(0),
            Operator::Median => median_floor(args),
            Operator::SumMod10 => args.iter().sum::<i64>().rem_euclid(10),
        }
    }
}

/// LRA's `int(np.median(args))`: the middle value, or for an even count the floor of the two middle values' mean
/// (values are non-negative digits, so int() truncation and floor agree).
fn median_floor(args: &[i64]) -> i64 {
    let mut sorted = args.to_vec();
    sorted.sort_unstable();
    let mid = sorted.len() / 2;
    match (sorted.len() % 2, mid.checked_sub(1)) {
        (1, _) => sorted[mid],
        (_, Some(below)) => (sorted[below] + sorted[mid]).div_euclid(2),
        (_, None) => 0, // no arguments; callers reject this before evaluating
    }
}

/// A token id's meaning, for evaluation.
enum Symbol {
    Digit(i64),
    Open(Operator),
    Close,
    OpenParen,
    CloseParen,
}

fn symbol(id: i64) -> Option<Symbol> {
    let token = *VOCAB.get(usize::try_from(id).ok()?)?;
    if let Some(op) = Operator::ALL.iter().find(|op| op.token() == token) {
        return Some(Symbol::Open(*op));
    }
    match token {
        "]" => Some(Symbol::Close),
        "(" => Some(Symbol::OpenParen),
        ")" => Some(Symbol::CloseParen),
        _ if (DIGIT_BASE..DIGIT_BASE + 10).contains(&id) => Some(Symbol::Digit(id - DIGIT_BASE)),
        _ => None,
    }
}

fn token_id(token: &str) -> Option<i64> {
    // Id 0 is padding, never a word of the text.
    VOCAB.iter().skip(1).position(|&t| t == token).map(|p| p as i64 + 1)
}

/// Splits on whitespace and maps each token to its id; unknown tokens are named in the error.
pub fn tokenize(expr: &str) -> Result<Vec<i64>, String> {
    expr.split_whitespace()
        .enumerate()
        .map(|(position, token)| token_id(token).ok_or_else(|| format!("unknown token '{token}' at position {}", position + 1)))
        .collect()
}

/// The value of an expression given as text.
pub fn evaluate(expr: &str) -> Result<i64, String> {
    evaluate_tokens(&tokenize(expr)?)
}

/// Hands a finished value to the innermost open operator, or makes it the expression's value at top level.
fn deliver(value: i64, open: &mut [(Operator, Vec<i64>)], result: &mut Option<i64>) -> Result<(), String> {
    match open.last_mut() {
        Some((_, args)) => args.push(value),
        None if result.is_some() => return Err("more than one top-level value".to_string()),
        None => *result = Some(value),
    }
    Ok(())
}

/// The value of a tokenized expression. Parentheses only group for binarised trees, so they must balance
/// but do not change the value.
pub fn evaluate_tokens(ids: &[i64]) -> Result<i64, String> {
    let mut open: Vec<(Operator, Vec<i64>)> = Vec::new();
    let mut result = None;
    let mut paren_depth = 0usize;
    for (index, &id) in ids.iter().enumerate() {
        let position = index + 1;
        match symbol(id).ok_or_else(|| format!("token id {id} at position {position} is not a ListOps token"))? {
            Symbol::Digit(value) => deliver(value, &mut open, &mut result)?,
            Symbol::Open(op) => open.push((op, Vec::new())),
            Symbol::Close => {
                let (op, args) = open.pop().ok_or_else(|| format!("']' at position {position} closes nothing"))?;
                if args.is_empty() {
                    return Err(format!("{} closed at position {position} has no arguments", op.token()));
                }
                deliver(op.apply(&args), &mut open, &mut result)?;
            }
            Symbol::OpenParen => paren_depth += 1,
            Symbol::CloseParen => {
                paren_depth = paren_depth.checked_sub(1).ok_or_else(|| format!("')' at position {position} closes nothing"))?;
            }
        }
    }
    if let Some((op, _)) = open.last() {
        return Err(format!("{} is never closed with ']'", op.token()));
    }
    if paren_depth != 0 {
        return Err(format!("{paren_depth} '(' never closed"));
    }
    result.ok_or_else(|| "empty expression".to_string())
}

/// Whether a first line looks like a ListOps TSV row or header (used by format sniffing).
pub(crate) fn is_tsv_line(line: &[u8]) -> bool {
    line == HEADER.as_bytes() || ((line.starts_with(b"[") || line.starts_with(b"(")) && line.contains(&b'\t'))
}

fn parse_label(text: &str) -> Result<i64, String> {
    let label: i64 = text.trim().parse().map_err(|_| format!("label '{}' is not an integer", text.trim()))?;
    if !(0..=9).contains(&label) {
        return Err(format!("label {label} out of range 0..9"));
    }
    Ok(label)
}

/// Parses one data row into (token ids, label).
fn parse_row(line: &str) -> Result<(Vec<i64>, i64), String> {
    let columns: Vec<&str> = line.split('\t').collect();
    let [source, target] = columns[..] else {
        return Err(format!("expected 2 tab-separated columns (Source, Target), found {}", columns.len()));
    };
    let tokens = tokenize(source)?;
    if tokens.is_empty() {
        return Err("empty expression".to_string());
    }
    Ok((tokens, parse_label(target)?))
}

/// Reads an LRA ListOps TSV (optional `Source\tTarget` header, blank lines ignored); rows longer than `max_len`
/// tokens are cut and counted in `truncated`.
pub fn read_tsv(bytes: &[u8], max_len: usize) -> Result<SequenceSet, DataError> {
    let text = utf8_text(bytes)?;
    let mut builder = SequenceSetBuilder::new(vocab_size(), max_len)?;
    for (line_number, line) in numbered_lines(text) {
        if line.trim().is_empty() || (line_number == 1 && line == HEADER) {
            continue;
        }
        let (tokens, label) = parse_row(line).map_err(|message| DataError::at_line(line_number, message))?;
        builder.push(&tokens, label);
    }
    builder.finish("ListOps rows")
}

/// Writes samples as an LRA-style TSV with a header, the inverse of `read_tsv`.
pub fn to_tsv(samples: &[(String, i64)]) -> String {
    let mut out = format!("{HEADER}\n");
    for (expr, label) in samples {
        out.push_str(&format!("{expr}\t{label}\n"));
    }
    out
}

/// Settings of the LRA generator. Lengths count tokens of the generated text (operators, digits and `]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenParams {
    pub max_depth: usize,
    pub max_args: usize,
    pub max_length: usize,
    pub min_length: usize,
}

impl Default for GenParams {
    fn default() -> Self {
        GenParams { max_depth: 10, max_args: 10, max_length: 2000, min_length: 500 }
    }
}

impl GenParams {
    /// The longest expression these settings can build: every argument a nested operator until max_depth.
    fn longest_possible(&self) -> usize {
        (1..=self.max_depth).rev().fold(1usize, |child_len, _| self.max_args.saturating_mul(child_len).saturating_add(2))
    }

    fn check(&self) -> Result<(), DataError> {
        let problem = if self.max_depth == 0 {
            Some("max_depth must be at least 1".to_string())
        } else if self.max_args < 2 {
            Some("max_args must be at least 2".to_string())
        } else if self.min_length > self.max_length {
            Some(format!("min_length {} exceeds max_length {}", self.min_length, self.max_length))
        } else if self.max_length < MIN_EXPRESSION_LEN {
            Some(format!("max_length {} is below the shortest expression ({MIN_EXPRESSION_LEN} tokens)", self.max_length))
        } else if self.min_length > self.longest_possible() {
            Some(format!("min_length {} is longer than any expression with these depth/argument limits", self.min_length))
        } else {
            None
        };
        problem.map_or(Ok(()), |message| Err(DataError::new("generator settings", message)))
    }
}

/// Appends one random operator node (LRA's generate_tree) to `out`. Returns false as soon as the text passes
/// `max_length`, since the sample would be rejected anyway; this also bounds the work per attempt.
fn grow_operator(rng: &mut ChaCha8Rng, depth: usize, params: &GenParams, out: &mut Vec<&'static str>) -> bool {
    out.push(Operator::ALL[rng.random_range(0..Operator::ALL.len())].token());
    let arg_count = rng.random_range(2..=params.max_args);
    for _ in 0..arg_count {
        if out.len() > params.max_length {
            return false;
        }
        let nested = depth < params.max_depth && rng.random::<f64>() < NESTED_OP_PROBABILITY;
        if nested {
            if !grow_operator(rng, depth + 1, params, out) {
                return false;
            }
        } else {
            out.push(VOCAB[(DIGIT_BASE + rng.random_range(0..10)) as usize]);
        }
    }
    out.push("]");
    out.len() <= params.max_length
}

/// `n` random expressions with their values, deterministic in `seed`. Expressions outside
/// [min_length, max_length] tokens are rejected and redrawn, as LRA does.
pub fn generate(seed: u64, n: usize, params: &GenParams) -> Result<Vec<(String, i64)>, DataError> {
    params.check()?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut samples = Vec::new();
    let mut attempts_left = n.saturating_mul(ATTEMPTS_PER_SAMPLE).max(ATTEMPTS_PER_SAMPLE);
    let mut tokens = Vec::new();
    while samples.len() < n {
        if attempts_left == 0 {
            let message = format!("gave up: only {} of {n} expressions fell within the length limits", samples.len());
            return Err(DataError::new("generator settings", message));
        }
        attempts_left -= 1;
        tokens.clear();
        if !grow_operator(&mut rng, 1, params, &mut tokens) || tokens.len() < params.min_length {
            continue;
        }
        let expr = tokens.join(" ");
        let value = evaluate(&expr).map_err(|message| DataError::new("generated expression", message))?;
        samples.push((expr, value));
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_params() -> GenParams {
        GenParams { max_depth: 4, max_args: 4, max_length: 40, min_length: 8 }
    }

    #[test]
    fn vocabulary_keeps_structure_tokens() {
        assert_eq!(vocab_size(), 18);
        assert_eq!(VOCAB[PAD_ID as usize], "<pad>");
        assert_eq!(tokenize("[MAX 0 9 ] ( )").unwrap(), vec![11, 1, 10, 15, 16, 17]);
    }

    #[test]
    fn tokenizer_names_unknown_tokens() {
        let err = tokenize("[MAX 1 [FIRST 2 ] ]").unwrap_err();
        assert_eq!(err, "unknown token '[FIRST' at position 3");
        assert!(tokenize("[MAX 12 ]").unwrap_err().contains("'12'"));
        assert!(tokenize("<pad>").is_err(), "padding is not a text token");
    }

    #[test]
    fn evaluates_known_expressions() {
        assert_eq!(evaluate("[MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]"), Ok(5));
        assert_eq!(evaluate("[SM 9 9 1 ]"), Ok(9));
        assert_eq!(evaluate("[MED 1 2 3 4 ]"), Ok(2));
        assert_eq!(evaluate("[MED 9 1 8 ]"), Ok(8));
        assert_eq!(evaluate("[MIN 7 [MAX 1 8 ] 9 ]"), Ok(7));
        assert_eq!(evaluate("[SM [SM 5 5 ] [MAX 3 4 ] ]"), Ok(4));
        assert_eq!(evaluate("6"), Ok(6));
    }

    #[test]
    fn parentheses_group_without_changing_value() {
        assert_eq!(evaluate("( ( ( [MAX 2 ) 9 ) ] )"), Ok(9));
        assert_eq!(evaluate("( [SM 9 ( 9 1 ) ] )"), Ok(9));
        assert_eq!(evaluate("( ( [MED 1 ) ( [MIN 4 6 ] ) 3 ] )"), Ok(3));
    }

    #[test]
    fn malformed_expressions_are_errors() {
        assert_eq!(evaluate("[MAX 1 2"), Err("[MAX is never closed with ']'".to_string()));
        assert!(evaluate("[MAX 1 ] ]").unwrap_err().contains("closes nothing"));
        assert!(evaluate("[MIN ]").unwrap_err().contains("no arguments"));
        assert!(evaluate("( [MAX 1 ]").unwrap_err().contains("never closed"));
        assert!(evaluate("1 2").unwrap_err().contains("more than one top-level value"));
        assert_eq!(evaluate(""), Err("empty expression".to_string()));
        assert!(evaluate_tokens(&[0]).is_err(), "padding id is not evaluable");
    }

    #[test]
    fn reads_tsv_with_header_and_truncation() {
        let tsv = b"Source\tTarget\n( [MAX 4 3 ] )\t4\n\n[SM 9 9 1 ]\t9\r\n";
        let set = read_tsv(tsv, 5).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.labels, vec![4, 9]);
        assert_eq!(set.sequence(0), &[16, 11, 5, 4, 15]);
        assert_eq!(set.sequence(1), &[14, 10, 10, 2, 15]);
        assert_eq!(set.truncated, 1, "the 6-token first row was cut to 5");
        assert_eq!(set.vocab_size, 18);
    }

    #[test]
    fn tsv_errors_name_the_line() {
        let err = read_tsv(b"Source\tTarget\n[MAX 1 ]\t1\n[MAX 1 ]\t1\textra\n", 10).unwrap_err();
        assert_eq!(err.to_string(), "line 3: expected 2 tab-separated columns (Source, Target), found 3");
        let err = read_tsv(b"[MAX 1 ]\t1\n[MAX 1 ]\t10\n", 10).unwrap_err();
        assert_eq!(err.to_string(), "line 2: label 10 out of range 0..9");
        let err = read_tsv(b"[MAX 1 ]\tx\n", 10).unwrap_err();
        assert_eq!(err.to_string(), "line 1: label 'x' is not an integer");
        let err = read_tsv(b"[MAX 1 ]\t1\n[MAX one ]\t1\n", 10).unwrap_err();
        assert_eq!(err.to_string(), "line 2: unknown token 'one' at position 2");
        assert_eq!(read_tsv(b"Source\tTarget\n", 10).unwrap_err().to_string(), "file: no ListOps rows found");
    }

    #[test]
    fn generator_is_deterministic_per_seed() {
        let a = generate(7, 20, &small_params()).unwrap();
        let b = generate(7, 20, &small_params()).unwrap();
        let c = generate(8, 20, &small_params()).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn generated_samples_respect_limits_and_labels() {
        let params = small_params();
        let samples = generate(1, 50, &params).unwrap();
        assert_eq!(samples.len(), 50);
        for (expr, label) in &samples {
            let tokens = tokenize(expr).unwrap();
            assert!((params.min_length..=params.max_length).contains(&tokens.len()), "{expr}");
            assert_eq!(evaluate(expr).unwrap(), *label);
            assert!((0..=9).contains(label));
        }
        let labels: std::collections::HashSet<_> = samples.iter().map(|(_, l)| l).collect();
        assert!(labels.len() > 3, "labels should vary: {labels:?}");
        let round_trip = read_tsv(to_tsv(&samples).as_bytes(), 100).unwrap();
        assert_eq!(round_trip.labels, samples.iter().map(|(_, l)| *l).collect::<Vec<_>>());
    }

    #[test]
    fn default_settings_generate_long_expressions() {
        let samples = generate(3, 2, &GenParams::default()).unwrap();
        for (expr, _) in &samples {
            let len = expr.split_whitespace().count();
            assert!((500..=2000).contains(&len), "length {len}");
        }
    }

    #[test]
    fn impossible_settings_are_refused_not_looped() {
        let params = GenParams { min_length: 50, max_length: 40, ..small_params() };
        assert!(generate(1, 1, &params).unwrap_err().to_string().contains("exceeds max_length"));
        let shallow = GenParams { max_depth: 1, max_args: 3, max_length: 100, min_length: 6 };
        assert!(generate(1, 1, &shallow).unwrap_err().to_string().contains("longer than any expression"));
        assert!(generate(1, 1, &GenParams { max_args: 1, ..small_params() }).is_err());
    }
}
