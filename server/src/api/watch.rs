//! The Watch service: one bidirectional stream per client call, served by
//! the watch hub; this layer only fills response headers.

use std::pin::Pin;

use ballast_proto::etcdserverpb::watch_server::Watch;
use ballast_proto::etcdserverpb::{WatchRequest, WatchResponse};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Header;
use crate::watch::WatchHub;

/// Responses buffered per stream before the stream's task waits for the client.
const RESPONSE_BUFFER: usize = 128;

pub struct WatchService {
    hub: WatchHub,
    header: Header,
}

impl WatchService {
    pub fn new(hub: WatchHub, header: Header) -> Self {
        Self { hub, header }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        self.header.node.refuse_if_learner()?;
        let (out, responses) = mpsc::channel(RESPONSE_BUFFER);
        self.hub.serve(request.into_inner(), out);
        let header = self.header.clone();
        let responses = ReceiverStream::new(responses).map(move |response| {
            response.map(|mut response| {
                // The hub sets every revision itself; a compaction cancel has none, as in etcd.
                header.fill_without_revision(&mut response.header);
                response
            })
        });
        Ok(Response::new(Box::pin(responses)))
    }
}
