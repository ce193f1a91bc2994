//! Protobuf encode and decode of a PutRequest (a 40-byte key and a 256-byte
//! value), the message every write pays for on the wire and in the Raft log.

use std::hint::black_box;

use ballast_proto::etcdserverpb::PutRequest;
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;

fn request() -> PutRequest {
    PutRequest {
        key: Bytes::from_static(b"/registry/pods/default/pod-00000042-abcd"),
        value: Bytes::from(vec![b'v'; 256]),
        ..Default::default()
    }
}

fn put_request(c: &mut Criterion) {
    let request = request();
    let encoded = Bytes::from(request.encode_to_vec());
    let mut group = c.benchmark_group("codec/put_request");
    group.throughput(Throughput::Bytes(encoded.len() as u64));
    group.bench_function("encode", |b| {
        let mut buffer = Vec::with_capacity(encoded.len());
        b.iter(|| {
            buffer.clear();
            black_box(&request)
                .encode(&mut buffer)
                .expect("the buffer has room");
            black_box(&buffer);
        });
    });
    // Decoding from Bytes shares the buffer for bytes fields, as tonic does.
    group.bench_function("decode", |b| {
        b.iter(|| black_box(PutRequest::decode(black_box(encoded.clone())).expect("decodes")));
    });
    group.finish();
}

criterion_group!(benches, put_request);
criterion_main!(benches);
