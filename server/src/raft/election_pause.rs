//! Keeps a member that is receiving a snapshot from campaigning.
//!
//! Receiving and installing the snapshot of a large store takes minutes. In
//! that time the leader's AppendEntries (deadline: one heartbeat interval)
//! time out on the busy member, its election timer runs out again and again,
//! and with openraft 0.9 (no pre-vote) each run raises its term; the first
//! message the leader then hears from it deposes a healthy leader. Measured
//! with a 620 MB snapshot: terms went past 200 and clients saw
//! `leader changed` every few seconds.
//!
//! So elections stop at the first snapshot chunk and start again at the
//! first AppendEntries accepted after the last chunk was handled (the
//! install): openraft has just reset the election timer then. A member whose leader died while
//! sending resumes after [`PAUSE_SILENCE_TIMEOUTS`] election timeouts
//! without a chunk; it is behind, so it could not have won an election
//! meanwhile.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::election_switch::ElectionSwitch;

/// Election timeouts without a snapshot chunk after which a paused member
/// campaigns again on its own.
const PAUSE_SILENCE_TIMEOUTS: u32 = 10;

#[derive(Clone)]
pub struct ElectionPause {
    switch: ElectionSwitch,
    silence: Duration,
    state: Arc<Mutex<PauseState>>,
}

struct PauseState {
    paused: bool,
    /// Snapshot chunk RPCs being handled; the last one lasts the whole install.
    chunks_in_flight: usize,
    last_chunk: Instant,
    /// The last chunk of a snapshot was handled: the transfer is over.
    transfer_over: bool,
}

/// Held while one snapshot chunk is handled.
pub struct ChunkGuard {
    pause: ElectionPause,
    last: bool,
}

impl ElectionPause {
    pub fn new(switch: ElectionSwitch, election_timeout: Duration) -> Self {
        Self {
            switch,
            silence: election_timeout * PAUSE_SILENCE_TIMEOUTS,
            state: Arc::new(Mutex::new(PauseState {
                paused: false,
                chunks_in_flight: 0,
                last_chunk: Instant::now(),
                transfer_over: false,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PauseState> {
        self.state.lock().expect("election pause lock poisoned")
    }

    /// A snapshot chunk arrived (`last`: the one that ends the transfer):
    /// no elections until [`Self::leader_heard`] after the transfer.
    pub fn chunk_started(&self, last: bool) -> ChunkGuard {
        let mut state = self.lock();
        state.chunks_in_flight += 1;
        state.last_chunk = Instant::now();
        state.transfer_over = false;
        if !state.paused {
            state.paused = true;
            self.switch.set_receiving_snapshot(true);
            tracing::info!("receiving a snapshot: elections paused");
            tokio::spawn(self.clone().resume_after_silence());
        }
        ChunkGuard {
            pause: self.clone(),
            last,
        }
    }

    /// The leader's AppendEntries was accepted.
    pub fn leader_heard(&self) {
        let mut state = self.lock();
        if state.paused && state.chunks_in_flight == 0 && state.transfer_over {
            self.resume(&mut state);
        }
    }

    fn resume(&self, state: &mut PauseState) {
        state.paused = false;
        self.switch.set_receiving_snapshot(false);
        tracing::info!("snapshot received: elections resumed unless held");
    }

    async fn resume_after_silence(self) {
        loop {
            tokio::time::sleep(self.silence).await;
            let mut state = self.lock();
            if !state.paused {
                return;
            }
            if state.chunks_in_flight == 0 && state.last_chunk.elapsed() >= self.silence {
                self.resume(&mut state);
                return;
            }
        }
    }
}

impl Drop for ChunkGuard {
    fn drop(&mut self) {
        let mut state = self.pause.lock();
        state.chunks_in_flight -= 1;
        state.last_chunk = Instant::now();
        state.transfer_over |= self.last;
    }
}
