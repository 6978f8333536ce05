//! A gRPC outcome carried inside a stream message: the multiplexed calls
//! (`Node.KvStream`'s `KvReply`, `Placement.AllocStream`'s `AllocAnswer`)
//! answer each call with a value or a status code and message, which the
//! caller turns back into the `Result` a unary call would have given.

use tonic::{Code, Status};

use crate::strata::{AllocAnswer, KvReply, KvResponse};

/// The reply to KvStream call `id`.
pub fn kv_reply(id: u64, res: Result<KvResponse, Status>) -> KvReply {
    match res {
        Ok(response) => KvReply {
            id,
            response: Some(response),
            code: 0,
            message: String::new(),
        },
        Err(s) => KvReply {
            id,
            response: None,
            code: s.code() as i32,
            message: s.message().to_string(),
        },
    }
}

/// What a unary `Kv` would have returned.
pub fn kv_result(r: KvReply) -> Result<KvResponse, Status> {
    match r.code {
        0 => Ok(r.response.unwrap_or_default()),
        c => Err(Status::new(Code::from(c), r.message)),
    }
}

/// The answer to one allocation on an AllocStream.
pub fn alloc_answer(res: Result<i64, Status>) -> AllocAnswer {
    match res {
        Ok(start) => AllocAnswer {
            start,
            code: 0,
            message: String::new(),
        },
        Err(s) => AllocAnswer {
            start: 0,
            code: s.code() as i32,
            message: s.message().to_string(),
        },
    }
}

/// What a unary `Alloc` would have returned (its start).
pub fn alloc_result(a: AllocAnswer) -> Result<i64, Status> {
    match a.code {
        0 => Ok(a.start),
        c => Err(Status::new(Code::from(c), a.message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_survive_the_round_trip() {
        let ok = KvResponse {
            response: b"x".to_vec(),
            error: None,
        };
        assert_eq!(kv_result(kv_reply(7, Ok(ok.clone()))).unwrap(), ok);
        let e = kv_result(kv_reply(7, Err(Status::unavailable("gone")))).unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::Unavailable, "gone"));
        assert_eq!(alloc_result(alloc_answer(Ok(42))).unwrap(), 42);
        let e = alloc_result(alloc_answer(Err(Status::invalid_argument("no")))).unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "no"));
    }
}
