//! A batch of autoregressive sequences being decoded: what each has generated, whether it has
//! ended, and, for those still running, a row of the KV cache and a row of next-token logits
//! (where the model keeps them: each step reads back only the tokens taken and their statistics).
//! Sequences fork (a candidate into its rollouts) by selecting cache rows, so a shared prefix
//! is computed once; every draw comes from the sequence's own counter-based random stream.

use crate::decode::check_prompts;
use crate::decode::lm::{BlockRequest, LanguageModel, Meter, metered_forward};
use crate::decode::logits::Logits;
use crate::error::{Error, Result};
use crate::model::transformer::LogitsFor;
use crate::rng::CounterRng;
use crate::sampling::{Picked, RowPick, SamplingParams, TokenStats};

/// Sequences of one model (cache `C`, logits `L`), decoded together.
#[derive(Clone)]
pub struct Sequences<C, L> {
    /// Per sequence: the tokens generated since the batch started (or was forked).
    pub tokens: Vec<Vec<u32>>,
    /// Per sequence: statistics of those tokens.
    pub stats: Vec<TokenStats>,
    /// Per sequence: whether it has ended (a stop token, or the model's context is full).
    pub ended: Vec<bool>,
    /// Per sequence: tokens the model has seen (prompt included).
    positions: Vec<usize>,
    /// Per sequence: its random stream and the draws taken from it.
    streams: Vec<u64>,
    draws: Vec<u64>,
    /// Cache rows of the running sequences; `live[row]` is the sequence a row holds.
    cache: Option<C>,
    live: Vec<usize>,
    /// Next-token logits of each cache row, [live, vocab].
    logits: Option<L>,
    /// While extending, keep a copy of the batch as it stands when its running sequences have
    /// generated this many tokens (see [`Sequences::at_mark`]).
    pub mark: Option<usize>,
    snapshot: Option<Box<Self>>,
}

/// The sequences of model `M`.
pub type Batch<M> = Sequences<<M as LanguageModel>::Cache, <M as LanguageModel>::Logits>;

/// Sees every sequence's tokens so far ([`Drawing::drafts`]).
pub type ShowTokens<'a> = &'a dyn Fn(&[Vec<u32>]);

/// How new tokens are drawn.
#[derive(Clone, Copy)]
pub struct Drawing<'a> {
    pub sampling: &'a SamplingParams,
    /// A sequence ends after emitting one of these (it is kept in its tokens).
    pub stop_ids: &'a [u32],
    pub rng: CounterRng,
    /// Sees every sequence's tokens so far after each token decoded (to show them as they
    /// come), if given.
    pub drafts: Option<ShowTokens<'a>>,
}

impl<'a> Drawing<'a> {
    /// The same drawing, showing the tokens to `drafts` after each token decoded.
    pub fn showing(self, drafts: ShowTokens<'a>) -> Self {
        Self {
            drafts: Some(drafts),
            ..self
        }
    }
}

impl<C: Clone, L: Logits> Sequences<C, L> {
    /// Runs each prompt through `model` in one batch; sequence i draws from `streams[i]`.
    pub async fn start<M: LanguageModel<Cache = C, Logits = L>>(
        model: &M,
        meter: &Meter<'_>,
        prompts: &[&[u32]],
        streams: Vec<u64>,
    ) -> Result<Self> {
        check_prompts(prompts, &streams)?;
        let n = prompts.len();
        let mut cache = model.new_cache(n);
        let logits = metered_forward(model, meter, prompts, &mut cache, LogitsFor::Last).await?;
        Ok(Self {
            tokens: vec![Vec::new(); n],
            stats: vec![TokenStats::default(); n],
            ended: vec![false; n],
            positions: prompts.iter().map(|p| p.len()).collect(),
            streams,
            draws: vec![0; n],
            cache: Some(cache),
            live: (0..n).collect(),
            logits: Some(logits),
            mark: None,
            snapshot: None,
        })
    }

    /// The running sequences' cache (None once every sequence has ended).
    pub fn cache(&self) -> Option<&C> {
        self.cache.as_ref()
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether there are no sequences.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Per sequence, the `n` most likely next tokens with their log-probabilities (None for
    /// a sequence that has ended).
    pub async fn next_top_log_probs(&self, n: usize) -> Result<Vec<Option<Vec<(u32, f64)>>>> {
        let mut out = vec![None; self.len()];
        if let Some(logits) = &self.logits {
            for (top, &seq) in logits.top_log_probs(n).await?.into_iter().zip(&self.live) {
                out[seq] = Some(top);
            }
        }
        Ok(out)
    }

    /// New sequences continuing running ones: new sequence j continues `picks[j].0` and draws
    /// from stream `picks[j].1`; its tokens and statistics start empty. The prefix is not
    /// recomputed: its cache rows are selected.
    pub fn fork<M: LanguageModel<Cache = C, Logits = L>>(
        &self,
        model: &M,
        picks: &[(usize, u64)],
    ) -> Result<Self> {
        if let Some(&(seq, _)) = picks.iter().find(|&&(seq, _)| !self.live.contains(&seq)) {
            return Err(Error::Sampling(format!(
                "sequence {seq} has ended and cannot be continued"
            )));
        }
        let seqs: Vec<usize> = picks.iter().map(|&(seq, _)| seq).collect();
        let mut forked = self.select_sequences(model, &seqs)?;
        let n = picks.len();
        forked.tokens = vec![Vec::new(); n];
        forked.stats = vec![TokenStats::default(); n];
        forked.streams = picks.iter().map(|&(_, stream)| stream).collect();
        forked.draws = vec![0; n];
        Ok(forked)
    }

    /// The sequences `seqs` (repeats allowed) as they are: tokens, statistics, random streams
    /// and, for the running ones, their cache rows.
    pub fn select_sequences<M: LanguageModel<Cache = C, Logits = L>>(
        &self,
        model: &M,
        seqs: &[usize],
    ) -> Result<Self> {
        let (mut rows, mut live) = (Vec::new(), Vec::new());
        for (new, &seq) in seqs.iter().enumerate() {
            if seq >= self.len() {
                return Err(Error::Sampling(format!(
                    "sequence {seq} does not exist in a batch of {}",
                    self.len()
                )));
            }
            if let Some(row) = self.live.iter().position(|&s| s == seq) {
                rows.push(row);
                live.push(new);
            }
        }
        let (cache, logits) = match (&self.cache, &self.logits, rows.is_empty()) {
            (Some(cache), Some(logits), false) => (
                Some(model.select(cache, &rows)?),
                Some(logits.select(&rows)?),
            ),
            _ => (None, None),
        };
        let pick = |v: &[u64]| seqs.iter().map(|&s| v[s]).collect::<Vec<_>>();
        Ok(Self {
            tokens: seqs.iter().map(|&s| self.tokens[s].clone()).collect(),
            stats: seqs.iter().map(|&s| self.stats[s]).collect(),
            ended: seqs.iter().map(|&s| self.ended[s]).collect(),
            positions: seqs.iter().map(|&s| self.positions[s]).collect(),
            streams: pick(&self.streams),
            draws: pick(&self.draws),
            cache,
            live,
            logits,
            mark: None,
            snapshot: None,
        })
    }

    /// The sequences `picks[i].0` (repeats allowed) as they are — tokens, statistics and, for
    /// the running ones, cache rows — each drawing its next tokens from the fresh stream
    /// `picks[i].1`, so copies of one sequence continue independently (resampling).
    pub fn resample<M: LanguageModel<Cache = C, Logits = L>>(
        &self,
        model: &M,
        picks: &[(usize, u64)],
    ) -> Result<Self> {
        let seqs: Vec<usize> = picks.iter().map(|&(seq, _)| seq).collect();
        let mut out = self.select_sequences(model, &seqs)?;
        out.streams = picks.iter().map(|&(_, stream)| stream).collect();
        out.draws = vec![0; picks.len()];
        Ok(out)
    }

    /// The sequences of several batches in one, in order. Their running sequences must have
    /// been decoded in step from a common fork (their caches hold equally many slots).
    pub fn concat<M: LanguageModel<Cache = C, Logits = L>>(
        model: &M,
        parts: Vec<Self>,
    ) -> Result<Self> {
        let mut out = Self {
            tokens: Vec::new(),
            stats: Vec::new(),
            ended: Vec::new(),
            positions: Vec::new(),
            streams: Vec::new(),
            draws: Vec::new(),
            cache: None,
            live: Vec::new(),
            logits: None,
            mark: None,
            snapshot: None,
        };
        let (mut caches, mut logits) = (Vec::new(), Vec::new());
        for part in parts {
            let offset = out.len();
            out.live.extend(part.live.iter().map(|&s| offset + s));
            logits.extend(part.logits);
            caches.extend(part.cache);
            out.tokens.extend(part.tokens);
            out.stats.extend(part.stats);
            out.ended.extend(part.ended);
            out.positions.extend(part.positions);
            out.streams.extend(part.streams);
            out.draws.extend(part.draws);
        }
        if !caches.is_empty() {
            out.cache = Some(model.concat(caches)?);
            out.logits = Some(L::concat(logits)?);
        }
        Ok(out)
    }

    /// A copy of the batch as it stands, without a mark.
    fn unmarked(&self) -> Self {
        let mut copy = self.clone();
        copy.mark = None;
        copy
    }

    /// The batch as it stood when its running sequences reached `mark` tokens during the last
    /// `extend` (every sequence that ended before then as it ended); the batch itself when none
    /// ran that far.
    pub fn at_mark(&self) -> Self {
        match &self.snapshot {
            Some(snapshot) => (**snapshot).clone(),
            None => self.unmarked(),
        }
    }

    /// Decodes up to `max_new` more tokens for every running sequence, one batched forward per
    /// token. Sequence i first takes the tokens `forced[i]` (if given) and samples the rest.
    /// Sequences that stop leave the batch; the others keep their next-token logits ready.
    pub async fn extend<M: LanguageModel<Cache = C, Logits = L>>(
        &mut self,
        model: &M,
        meter: &Meter<'_>,
        max_new: usize,
        forced: Option<&[Vec<u32>]>,
        drawing: Drawing<'_>,
    ) -> Result<()> {
        drawing.sampling.validate()?;
        self.snapshot = None;
        if model.decodes_blocks() {
            return self
                .extend_by_blocks(model, meter, max_new, forced, drawing)
                .await;
        }
        for _ in 0..max_new {
            if self.live.is_empty() {
                break;
            }
            let live = self.live.clone();
            let picks: Vec<RowPick> = live
                .iter()
                .map(|&seq| {
                    let produced = self.tokens[seq].len();
                    match forced.and_then(|f| f[seq].get(produced)) {
                        Some(&token) => RowPick::Forced(token),
                        None => {
                            let u = drawing.rng.uniform(self.streams[seq], self.draws[seq]);
                            self.draws[seq] += 1;
                            RowPick::Draw(u)
                        }
                    }
                })
                .collect();
            let logits = self
                .logits
                .take()
                .ok_or(Error::EmptyInput("no running sequences"))?;
            let picked = logits.take(&picks, drawing.sampling).await?;
            let mut keep = Vec::with_capacity(live.len());
            let mut next = Vec::with_capacity(live.len());
            for (row, (&seq, &p)) in live.iter().zip(&picked).enumerate() {
                self.record(seq, p, drawing.stop_ids);
                if !self.ended[seq] {
                    keep.push(row);
                    next.push([p.token]);
                }
            }
            if let Some(show) = drawing.drafts {
                show(&self.tokens);
            }
            let chunks: Vec<&[u32]> = next.iter().map(|t| t.as_slice()).collect();
            self.advance(model, meter, &keep, &chunks).await?;
            // Running sequences decode in step: the first one's length is everyone's.
            let reached = |n: usize| {
                self.live
                    .first()
                    .is_some_and(|&s| self.tokens[s].len() == n)
            };
            if self.snapshot.is_none() && self.mark.is_some_and(reached) {
                self.snapshot = Some(Box::new(self.unmarked()));
            }
        }
        Ok(())
    }

    /// [`Sequences::extend`] on a model that decodes whole blocks: one block per running
    /// sequence, split at the mark (if it falls inside) so that the batch as it stood there is
    /// kept exactly.
    async fn extend_by_blocks<M: LanguageModel<Cache = C, Logits = L>>(
        &mut self,
        model: &M,
        meter: &Meter<'_>,
        max_new: usize,
        forced: Option<&[Vec<u32>]>,
        drawing: Drawing<'_>,
    ) -> Result<()> {
        if forced.is_some() {
            return Err(Error::Strategy(
                "this strategy forces tokens through the model's logits, which a model served \
                 over an API does not hand back: use sample, best-of-n, majority, ets, a \
                 particle filter or ets-is with a served draft"
                    .into(),
            ));
        }
        let produced = self.live.first().map_or(0, |&s| self.tokens[s].len());
        match self.mark.map(|m| m.saturating_sub(produced)) {
            Some(first) if first > 0 && first < max_new => {
                self.extend_one_block(model, meter, first, drawing).await?;
                let copy = self.unmarked();
                self.extend_one_block(model, meter, max_new - first, drawing)
                    .await?;
                self.snapshot = Some(Box::new(copy));
                Ok(())
            }
            _ => self.extend_one_block(model, meter, max_new, drawing).await,
        }
    }

    /// Asks the model for up to `max_new` more tokens of every running sequence at once, then
    /// feeds the ones kept to the cache of those still running. A sequence the model ended
    /// early (its context is full, or it stopped at an end token of its own) ends here.
    async fn extend_one_block<M: LanguageModel<Cache = C, Logits = L>>(
        &mut self,
        model: &M,
        meter: &Meter<'_>,
        max_new: usize,
        drawing: Drawing<'_>,
    ) -> Result<()> {
        meter.check_stop()?;
        if self.live.is_empty() || max_new == 0 {
            return Ok(());
        }
        let max = model.max_positions();
        let live = self.live.clone();
        let requests: Vec<BlockRequest> = live
            .iter()
            .enumerate()
            .map(|(row, &seq)| BlockRequest {
                row,
                max_new: max_new.min(max.saturating_sub(self.positions[seq])),
                // 31 bits of the sequence's next draw.
                seed: (drawing.rng.uniform(self.streams[seq], self.draws[seq])
                    * f64::from(1u32 << 31)) as u32,
            })
            .collect();
        let cache = self
            .cache
            .as_ref()
            .ok_or(Error::EmptyInput("no running sequences"))?;
        let blocks = model
            .continue_rows(
                cache,
                &requests,
                drawing.sampling,
                drawing.stop_ids,
                meter.stop(),
            )
            .await?;
        if blocks.len() != live.len() {
            return Err(Error::Internal("a block model answered for other rows"));
        }
        let (mut keep, mut chunks) = (Vec::new(), Vec::new());
        for ((request, &seq), block) in requests.iter().zip(&live).zip(blocks) {
            self.draws[seq] += 1;
            let start = self.tokens[seq].len();
            // A block longer than asked (a server's text tokenized again here) is cut to the
            // block, and the sequence goes on from there: the server's end was past the cut.
            let cut = block.picked.len() > request.max_new;
            for picked in block.picked.into_iter().take(request.max_new) {
                self.record(seq, picked, drawing.stop_ids);
                if self.ended[seq] {
                    break;
                }
            }
            let new = self.tokens[seq][start..].to_vec();
            if (block.finished && !cut) || new.is_empty() {
                self.ended[seq] = true;
            }
            if self.ended[seq] {
                // Counted as the local decoder counts a sequence that ends: every token but
                // the last went through the model (the kept ones are fed below).
                meter.add(&[&new[..new.len().saturating_sub(1)]]);
            } else {
                keep.push(request.row);
                chunks.push(new);
            }
        }
        if let Some(show) = drawing.drafts {
            show(&self.tokens);
        }
        self.logits = None;
        let chunks: Vec<&[u32]> = chunks.iter().map(Vec::as_slice).collect();
        self.advance(model, meter, &keep, &chunks).await
    }

    /// Feeds the given tokens to every sequence (teacher forcing, one batched forward),
    /// recording their statistics as if drawn with `drawing.sampling`.
    pub async fn feed<M: LanguageModel<Cache = C, Logits = L>>(
        &mut self,
        model: &M,
        meter: &Meter<'_>,
        chunks: &[&[u32]],
        drawing: Drawing<'_>,
    ) -> Result<()> {
        if chunks.len() != self.len() || self.live.len() != self.len() {
            return Err(Error::Sampling(
                "feeding needs one chunk for each running sequence".into(),
            ));
        }
        if model.decodes_blocks() {
            return self.feed_blocks(model, meter, chunks, drawing, true).await;
        }
        let n = self.len();
        let width = chunks.iter().map(|c| c.len()).max().unwrap_or(0);
        let mut cache = self.cache.take().ok_or(Error::EmptyInput("no sequences"))?;
        let rows = metered_forward(model, meter, chunks, &mut cache, LogitsFor::All).await?;
        self.cache = Some(cache);
        let before = self
            .logits
            .take()
            .ok_or(Error::EmptyInput("no sequences"))?;
        // Rows 0..n: each sequence's next-token logits before the chunk; then the pass's rows,
        // [n, width]. Chunks are left-padded to `width`: token j ≥ 1 is scored on row pad + j − 1.
        let joined = L::concat(vec![before, rows])?;
        let row_of = |seq: usize, slot: usize| n + seq * width + slot;
        let (mut index, mut picks) = (Vec::new(), Vec::new());
        for (seq, chunk) in chunks.iter().enumerate() {
            let pad = width - chunk.len();
            for (j, &token) in chunk.iter().enumerate() {
                index.push(if j == 0 {
                    seq
                } else {
                    row_of(seq, pad + j - 1)
                });
                picks.push(RowPick::Forced(token));
            }
        }
        let mut picked = joined
            .select(&index)?
            .take(&picks, drawing.sampling)
            .await?
            .into_iter();
        let mut keep = Vec::new();
        for (seq, chunk) in chunks.iter().enumerate() {
            if self.record_fed(seq, picked.by_ref().take(chunk.len()), drawing.stop_ids) {
                keep.push(seq);
            }
        }
        let last: Vec<usize> = (0..n).map(|seq| row_of(seq, width - 1)).collect();
        self.logits = Some(joined.select(&last)?);
        self.retain(model, &keep)
    }

    /// Feeds the given tokens as [`Sequences::feed`] does, where their statistics are not
    /// read: a model that [decodes blocks](LanguageModel::decodes_blocks) is then not asked to
    /// score them (a request to a server), and they are recorded without log-probabilities.
    pub async fn feed_unscored<M: LanguageModel<Cache = C, Logits = L>>(
        &mut self,
        model: &M,
        meter: &Meter<'_>,
        chunks: &[&[u32]],
        drawing: Drawing<'_>,
    ) -> Result<()> {
        if model.decodes_blocks() {
            self.feed_blocks(model, meter, chunks, drawing, false).await
        } else {
            self.feed(model, meter, chunks, drawing).await
        }
    }

    /// [`Sequences::feed`] on a model that decodes blocks: the model scores each chunk after
    /// its sequence (if `score`), then the chunks join the cache.
    async fn feed_blocks<M: LanguageModel<Cache = C, Logits = L>>(
        &mut self,
        model: &M,
        meter: &Meter<'_>,
        chunks: &[&[u32]],
        drawing: Drawing<'_>,
        score: bool,
    ) -> Result<()> {
        if chunks.len() != self.len() || self.live.len() != self.len() {
            return Err(Error::Sampling(
                "feeding needs one chunk for each running sequence".into(),
            ));
        }
        meter.check_stop()?;
        let cache = self
            .cache
            .as_ref()
            .ok_or(Error::EmptyInput("no sequences"))?;
        let scored = if score {
            model
                .score_rows(cache, chunks, drawing.sampling, meter.stop())
                .await?
        } else {
            chunks
                .iter()
                .map(|chunk| chunk.iter().map(|&token| Picked::unscored(token)).collect())
                .collect()
        };
        if scored.len() != chunks.len()
            || scored.iter().zip(chunks).any(|(s, c)| s.len() != c.len())
        {
            return Err(Error::Internal("a block model scored other tokens"));
        }
        let mut cache = self.cache.take().ok_or(Error::EmptyInput("no sequences"))?;
        let logits = metered_forward(model, meter, chunks, &mut cache, LogitsFor::Last).await?;
        self.cache = Some(cache);
        self.logits = Some(logits);
        let mut keep = Vec::new();
        for (seq, picked) in scored.into_iter().enumerate() {
            if self.record_fed(seq, picked.into_iter(), drawing.stop_ids) {
                keep.push(seq);
            }
        }
        self.retain(model, &keep)
    }

    /// Records the fed tokens `picked` of sequence `seq` up to its end (those after a stop
    /// token are passed over); whether it still runs.
    fn record_fed(
        &mut self,
        seq: usize,
        picked: impl Iterator<Item = Picked>,
        stop_ids: &[u32],
    ) -> bool {
        for p in picked {
            if !self.ended[seq] {
                self.record(seq, p, stop_ids);
                self.positions[seq] += 1;
            }
        }
        !self.ended[seq]
    }

    /// Appends a taken token to sequence `seq`; a stop token ends it.
    fn record(&mut self, seq: usize, picked: Picked, stop_ids: &[u32]) {
        self.stats[seq] = self.stats[seq].plus(picked.stats);
        self.tokens[seq].push(picked.token);
        if stop_ids.contains(&picked.token) {
            self.ended[seq] = true;
        }
    }

    /// Keeps the cache rows `keep` (indices into the running rows), feeds each its chunk and
    /// stores the new next-token logits.
    async fn advance<M: LanguageModel<Cache = C, Logits = L>>(
        &mut self,
        model: &M,
        meter: &Meter<'_>,
        keep: &[usize],
        chunks: &[&[u32]],
    ) -> Result<()> {
        let seqs: Vec<usize> = keep.iter().map(|&r| self.live[r]).collect();
        // A sequence whose context is full ends here instead of failing the batch.
        let max = model.max_positions();
        let (mut fit_rows, mut fit_chunks) = (Vec::new(), Vec::new());
        for ((&row, &seq), chunk) in keep.iter().zip(&seqs).zip(chunks) {
            if self.positions[seq] + chunk.len() > max {
                self.ended[seq] = true;
            } else {
                fit_rows.push(row);
                fit_chunks.push(*chunk);
            }
        }
        if fit_rows.is_empty() {
            self.cache = None;
            self.live.clear();
            self.logits = None;
            return Ok(());
        }
        let mut cache = match self.cache.take() {
            Some(c) if fit_rows.len() == self.live.len() => c,
            Some(c) => model.select(&c, &fit_rows)?,
            None => return Err(Error::EmptyInput("no running sequences")),
        };
        self.live = fit_rows.iter().map(|&r| self.live[r]).collect();
        self.logits =
            Some(metered_forward(model, meter, &fit_chunks, &mut cache, LogitsFor::Last).await?);
        for (&seq, chunk) in self.live.iter().zip(&fit_chunks) {
            self.positions[seq] += chunk.len();
        }
        self.cache = Some(cache);
        Ok(())
    }

    /// Drops every running sequence not in `keep` (sequence indices) from the cache.
    fn retain<M: LanguageModel<Cache = C, Logits = L>>(
        &mut self,
        model: &M,
        keep: &[usize],
    ) -> Result<()> {
        if keep.len() == self.live.len() {
            return Ok(());
        }
        let rows: Vec<usize> = keep
            .iter()
            .filter_map(|s| self.live.iter().position(|l| l == s))
            .collect();
        if rows.is_empty() {
            self.cache = None;
            self.live.clear();
            self.logits = None;
            return Ok(());
        }
        let cache = self.cache.take().ok_or(Error::EmptyInput("no sequences"))?;
        self.cache = Some(model.select(&cache, &rows)?);
        let logits = self
            .logits
            .take()
            .ok_or(Error::EmptyInput("no sequences"))?;
        self.logits = Some(logits.select(&rows)?);
        self.live = rows.iter().map(|&r| self.live[r]).collect();
        Ok(())
    }
}
