//! Strategies built from independent samples: one sample (ancestral or greedy), Best-of-N by
//! reward, and the majority vote.

use crate::decode::diffusion::Denoising;
use crate::decode::lm::LanguageModel;
use crate::decode::sequences::Sequences;
use crate::error::Result;
use crate::reward::Reward;
use crate::sampling::{SamplingParams, TokenStats};
use crate::strategy::{OwnedResponse, Purpose, Run, Strategy, Tracer};
use crate::task::answer::majority_vote;
use crate::trace::{CandidateTrace, Selection, StepTrace, TraceEvent};

/// `n` independent responses to `prompt` (tokens and statistics), greedy for the greedy
/// strategy; causal samples share the prompt's KV cache.
pub(super) async fn samples<M: LanguageModel>(
    run: &Run<'_, '_, M>,
    prompt: &[u32],
    n: usize,
) -> Result<Vec<(Vec<u32>, TokenStats)>> {
    let sampling = match run.spec.strategy {
        Strategy::Greedy => SamplingParams::greedy(),
        _ => run.spec.sampling,
    };
    let model = run.solver.target;
    let streams: Vec<u64> = (0..n).map(|i| run.stream(Purpose::Sample, 0, i)).collect();
    if run.causal() {
        let root = Sequences::start(model, &run.target_meter, &[prompt], vec![0]).await?;
        let picks: Vec<(usize, u64)> = streams.iter().map(|&s| (0, s)).collect();
        let mut batch = root.fork(model, &picks)?;
        let show = |tokens: &[Vec<u32>]| run.show_drafts(0, tokens.iter().map(Vec::as_slice));
        batch
            .extend(
                model,
                &run.target_meter,
                run.spec.max_tokens,
                None,
                run.drawing(&sampling).showing(&show),
            )
            .await?;
        Ok(batch.tokens.into_iter().zip(batch.stats).collect())
    } else {
        let options = run.diffusion(sampling.temperature);
        let prompts = vec![prompt; n];
        let mut batch = Denoising::start(model, &prompts, streams, &options, run.solver.stop_ids)?;
        batch.run(model, &run.target_meter, options.steps).await?;
        let stats: Vec<TokenStats> = (0..batch.len()).map(|b| batch.stats(b)).collect();
        Ok(batch.answers.into_iter().zip(stats).collect())
    }
}

/// The responses of `samples` with their texts and answers.
fn responses<M: LanguageModel>(
    run: &Run<'_, '_, M>,
    samples: &[(Vec<u32>, TokenStats)],
) -> Result<Vec<OwnedResponse>> {
    samples
        .iter()
        .map(|(tokens, stats)| run.response(tokens, *stats))
        .collect()
}

/// Records the choice among samples as one step of the trace, with how it was made.
fn trace_choice<M: LanguageModel>(
    run: &Run<'_, '_, M>,
    tracer: &mut Tracer<'_>,
    responses: &[OwnedResponse],
    selection: Selection,
    chosen: usize,
) {
    let candidates = responses
        .iter()
        .map(|r| CandidateTrace {
            text: r.text.clone(),
            complete: true,
            recycled: false,
            log_energy: None,
            rollouts: Vec::new(),
        })
        .collect();
    tracer.emit(TraceEvent::Step(StepTrace {
        index: 0,
        candidates,
        chosen,
        selection,
        tokens: run.target_meter.tokens() + run.draft_meter.tokens(),
        elapsed_ms: run.elapsed_ms(),
    }));
}

/// `n` samples; the first with the highest reward.
pub(super) async fn best_of_n<M: LanguageModel>(
    run: &Run<'_, '_, M>,
    prompt: &[u32],
    n: usize,
    reward: &mut dyn Reward,
    tracer: &mut Tracer<'_>,
) -> Result<Vec<u32>> {
    let mut samples = samples(run, prompt, n).await?;
    let responses = responses(run, &samples)?;
    let views: Vec<_> = responses.iter().map(OwnedResponse::view).collect();
    let rewards = reward.score(&views).await?;
    let mut best = 0;
    for (i, r) in rewards.iter().enumerate() {
        if *r > rewards[best] {
            best = i;
        }
    }
    trace_choice(
        run,
        tracer,
        &responses,
        Selection::RewardArgmax { rewards },
        best,
    );
    Ok(samples.swap_remove(best).0)
}

/// `n` samples; the first whose answer is the most frequent (the first sample if none answers).
pub(super) async fn majority<M: LanguageModel>(
    run: &Run<'_, '_, M>,
    prompt: &[u32],
    n: usize,
    tracer: &mut Tracer<'_>,
) -> Result<Vec<u32>> {
    let mut samples = samples(run, prompt, n).await?;
    let responses = responses(run, &samples)?;
    let answers: Vec<Option<String>> = responses.iter().map(|r| r.answer.clone()).collect();
    let winner = majority_vote(&answers);
    let chosen = answers
        .iter()
        .position(|a| a.is_some() && *a == winner)
        .unwrap_or(0);
    let votes: Vec<usize> = answers
        .iter()
        .map(|a| answers.iter().filter(|b| a.is_some() && *b == a).count())
        .collect();
    trace_choice(run, tracer, &responses, Selection::Vote { votes }, chosen);
    Ok(samples.swap_remove(chosen).0)
}
