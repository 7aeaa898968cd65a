//! Beam search: keep the `width` most likely continuations by summed log-probability, expanding
//! each by its `width` most likely next tokens; a beam that ends is set aside, and the best
//! response by log-probability per token wins (HF's length penalty 1).
//!
//! On a masked diffusion model (the LLaDA beam search of the ETS paper's code) a beam reveals
//! one token per step, in its current semi-autoregressive block: the masked position the model
//! is most confident of, expanded by that position's `width` most likely tokens. A beam ends
//! once its answer is settled (a stop token revealed with everything before it).

use crate::decode::diffusion::Denoising;
use crate::decode::lm::LanguageModel;
use crate::decode::sequences::Sequences;
use crate::error::Result;
use crate::sampling::SamplingParams;
use crate::strategy::Run;

/// The best of `width` beams after `prompt`.
pub(super) async fn beam_search<M: LanguageModel>(
    run: &Run<'_, '_, M>,
    prompt: &[u32],
    width: usize,
) -> Result<Vec<u32>> {
    if !run.causal() {
        return diffusion_beam_search(run, prompt, width).await;
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
    Ok(best_per_token(done))
}

/// Beam search on a masked diffusion model: the best of `width` beams after `prompt`, each
/// revealing one token per step (the answer's `gen_length` tokens at most).
async fn diffusion_beam_search<M: LanguageModel>(
    run: &Run<'_, '_, M>,
    prompt: &[u32],
    width: usize,
) -> Result<Vec<u32>> {
    let model = run.solver.target;
    let stop_ids = run.solver.stop_ids;
    let options = run.diffusion(1.0);
    let mut beams = Denoising::start(model, &[prompt], vec![0], &options, stop_ids)?;
    // Per beam: the log-probability of each answer position's token (0 while masked), and
    // their sum, the beam's score.
    let mut log_probs: Vec<Vec<f64>> = vec![vec![0.0; options.gen_length]];
    let mut scores = vec![0.0];
    // Ended answers with their log-probability per token up to the stop token.
    let mut done: Vec<(Vec<u32>, f64)> = Vec::new();
    let per_token = |answer: &[u32], log_probs: &[f64]| {
        let end = answer
            .iter()
            .position(|t| stop_ids.contains(t))
            .map_or(answer.len(), |p| p + 1);
        log_probs[..end].iter().sum::<f64>() / end.max(1) as f64
    };
    for _ in 0..options.gen_length {
        let tops = beams
            .block_top_log_probs(model, &run.target_meter, width)
            .await?;
        // (score, beam, position, token, log-probability)
        let mut expansions: Vec<(f64, usize, usize, u32, f64)> = Vec::new();
        for (beam, positions) in tops.iter().enumerate() {
            // The position the model is most confident of; ties go to the earlier one.
            let best = positions
                .iter()
                .filter_map(|(pos, top)| top.first().map(|&(_, p)| (p, *pos, top)))
                .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
            if let Some((_, pos, top)) = best {
                for &(token, log_p) in top {
                    expansions.push((scores[beam] + log_p, beam, pos, token, log_p));
                }
            }
        }
        if expansions.is_empty() {
            break;
        }
        expansions.sort_by(|a, b| {
            b.0.total_cmp(&a.0)
                .then((a.1, a.2, a.3).cmp(&(b.1, b.2, b.3)))
        });
        expansions.truncate(width);
        let picks: Vec<(usize, u64)> = expansions.iter().map(|e| (e.1, 0)).collect();
        let mut next = beams.fork(&picks);
        let mut next_log_probs = Vec::with_capacity(expansions.len());
        for (j, &(_, beam, pos, token, log_p)) in expansions.iter().enumerate() {
            next.reveal(j, pos, token)?;
            let mut own = log_probs[beam].clone();
            own[pos] = log_p;
            next_log_probs.push(own);
        }
        let mut live = Vec::new();
        for (j, (answer, own)) in next.answers.iter().zip(&next_log_probs).enumerate() {
            if next.settled(j) {
                done.push((answer.clone(), per_token(answer, own)));
            } else {
                live.push(j);
            }
        }
        let mask = next.mask();
        run.show_drafts(
            0,
            next.answers.iter().map(|a| {
                let end = a.iter().position(|&t| t == mask).unwrap_or(a.len());
                &a[..end]
            }),
        );
        scores = live.iter().map(|&j| expansions[j].0).collect();
        log_probs = live.iter().map(|&j| next_log_probs[j].clone()).collect();
        beams = next.fork(&live.iter().map(|&j| (j, 0)).collect::<Vec<_>>());
        if done.len() >= width || beams.is_empty() {
            break;
        }
    }
    // Answers the schedule revealed whole without a stop token compete too.
    for (b, answer) in beams.answers.iter().enumerate() {
        if !answer.contains(&beams.mask()) {
            done.push((answer.clone(), per_token(answer, &log_probs[b])));
        }
    }
    Ok(best_per_token(done))
}

/// The response with the highest log-probability per token (the first of equals; none: empty).
fn best_per_token(done: Vec<(Vec<u32>, f64)>) -> Vec<u32> {
    let mut best: Option<(Vec<u32>, f64)> = None;
    for (tokens, score) in done {
        if best.as_ref().is_none_or(|(_, s)| score > *s) {
            best = Some((tokens, score));
        }
    }
    best.map(|(tokens, _)| tokens).unwrap_or_default()
}
