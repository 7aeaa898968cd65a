//! Beam search for causal models: keep the `width` most likely continuations by summed
//! log-probability, expanding each by its `width` most likely next tokens; a beam that emits a
//! stop token is set aside, and the best response by log-probability per token wins.

use crate::decode::lm::LanguageModel;
use crate::decode::sequences::Sequences;
use crate::error::{Error, Result};
use crate::sampling::SamplingParams;
use crate::strategy::Run;

/// The best of `width` beams after `prompt`.
pub(super) async fn beam_search<M: LanguageModel>(
    run: &Run<'_, '_, M>,
    prompt: &[u32],
    width: usize,
) -> Result<Vec<u32>> {
    if !run.causal() {
        return Err(Error::Strategy(
            "beam search runs on causal models; use best-of-n or ets for a diffusion model".into(),
        ));
    }
    let (model, meter) = (run.solver.target, &run.target_meter);
    let raw = SamplingParams::default();
    let mut beams = Sequences::start(model, meter, &[prompt], vec![0]).await?;
    // Per beam: its tokens and summed log-probability.
    let mut history: Vec<(Vec<u32>, f64)> = vec![(Vec::new(), 0.0)];
    // Finished responses with their log-probability per token.
    let mut done: Vec<(Vec<u32>, f64)> = Vec::new();
    for _ in 0..run.spec.max_tokens {
        let mut expansions: Vec<(f64, usize, u32)> = Vec::new();
        let tops = beams.next_top_log_probs(width).await?;
        for (seq, ((_, score), top)) in history.iter().zip(tops).enumerate() {
            for (token, log_p) in top.into_iter().flatten() {
                expansions.push((score + log_p, seq, token));
            }
        }
        if expansions.is_empty() {
            break;
        }
        expansions.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
        expansions.truncate(width);
        let picks: Vec<(usize, u64)> = expansions.iter().map(|&(_, s, _)| (s, 0)).collect();
        let forced: Vec<Vec<u32>> = expansions.iter().map(|&(_, _, t)| vec![t]).collect();
        let mut next = beams.fork(model, &picks)?;
        next.extend(model, meter, 1, Some(&forced), run.drawing(&raw))
            .await?;
        history = expansions
            .iter()
            .map(|&(score, seq, token)| {
                let mut tokens = history[seq].0.clone();
                tokens.push(token);
                (tokens, score)
            })
            .collect();
        for (seq, (tokens, score)) in history.iter().enumerate() {
            if next.ended[seq] {
                done.push((tokens.clone(), score / tokens.len() as f64));
            }
        }
        beams = next;
        run.show_drafts(0, history.iter().map(|(t, _)| t.as_slice()));
        if done.len() >= width || (0..beams.len()).all(|s| beams.ended[s]) {
            break;
        }
    }
    // Beams cut off by the length limit compete too.
    for (seq, (tokens, score)) in history.iter().enumerate() {
        if !beams.ended[seq] && !tokens.is_empty() {
            done.push((tokens.clone(), score / tokens.len() as f64));
        }
    }
    let mut best: Option<(Vec<u32>, f64)> = None;
    for (tokens, score) in done {
        if best.as_ref().is_none_or(|(_, s)| score > *s) {
            best = Some((tokens, score));
        }
    }
    Ok(best.map(|(tokens, _)| tokens).unwrap_or_default())
}
