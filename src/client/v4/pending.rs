//! The client's mirror of the server's state machine (docs/protocol-v4.md, "State
//! machine"): the queue of unanswered requests, and which server frame may come next.
//!
//! The server answers requests in the order it received them, one answer at a time, and
//! sends nothing unasked but a tag-0 `ERROR` that closes the connection. So every frame it
//! sends must be the answer to the **oldest** unanswered request (same tag, that request's
//! answer type or `ERROR`), or a tag-0 `ERROR`. Anything else is the server's protocol
//! error: the client stops there rather than guess which request a frame belongs to.

use crate::protocol::v4::{CONNECTION_TAG, FrameHeader, FrameType};
use std::collections::VecDeque;
use thiserror::Error;

/// A request waiting for its answer: its tag and the frame type that answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Awaited {
    /// The request's tag.
    pub tag: u32,
    /// The frame type of a successful answer.
    pub answer: FrameType,
}

impl Awaited {
    /// The answer awaited by a request of type `request` under `tag`; `None` for frames
    /// that are not answered on their own (`DATA`, `PUT_END`: the put's answer is awaited
    /// from its `PUT_BEGIN`).
    pub fn of(request: FrameType, tag: u32) -> Option<Awaited> {
        let answer = match request {
            FrameType::Hello => FrameType::Welcome,
            FrameType::Register | FrameType::Upgrade => FrameType::Registered,
            FrameType::PutBegin => FrameType::PutReceived,
            FrameType::Commit => FrameType::Committed,
            FrameType::Discard => FrameType::Discarded,
            FrameType::ResumeQuery => FrameType::ResumeState,
            FrameType::Rm => FrameType::Removed,
            _ => return None,
        };
        Some(Awaited { tag, answer })
    }
}

/// Where a server frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// It answers the oldest request (its answer type or an `ERROR` with its tag).
    Answer,
    /// A tag-0 `ERROR`: about the whole connection, which the server closes.
    Connection,
}

/// A frame the server should not have sent now.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("the server sent {got} with tag {tag} where {}", expected_text(.awaited))]
pub struct Unexpected {
    /// The frame's type.
    pub got: FrameType,
    /// Its tag.
    pub tag: u32,
    /// What was awaited, if anything.
    pub awaited: Option<Awaited>,
}

fn expected_text(awaited: &Option<Awaited>) -> String {
    match awaited {
        Some(a) => format!("{} or ERROR with tag {} was due", a.answer, a.tag),
        None => "no answer was due".to_owned(),
    }
}

/// The unanswered requests, oldest first, each with what the caller attached to it (the
/// channel its answer goes to).
#[derive(Debug)]
pub struct Pending<T> {
    queue: VecDeque<(Awaited, T)>,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Pending { queue: VecDeque::new() }
    }
}

impl<T> Pending<T> {
    /// A request was (or is about to be) sent: its answer is due after all earlier ones.
    pub fn push(&mut self, awaited: Awaited, with: T) {
        self.queue.push_back((awaited, with));
    }

    /// How many answers are due.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Decides where the frame with `header` goes; for an answer, the request it answers
    /// is taken off the queue and returned with what was attached to it.
    pub fn route(&mut self, header: &FrameHeader) -> Result<(Route, Option<T>), Unexpected> {
        let (got, tag) = (header.frame_type(), header.tag());
        let front = self.queue.front().map(|(a, _)| *a);
        match front {
            Some(a) if a.tag == tag && (got == a.answer || got == FrameType::Error) => {
                Ok((Route::Answer, self.queue.pop_front().map(|(_, t)| t)))
            }
            _ if got == FrameType::Error && tag == CONNECTION_TAG => Ok((Route::Connection, None)),
            awaited => Err(Unexpected { got, tag, awaited }),
        }
    }

    /// Everything still due, oldest first (when the connection ends).
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.queue.drain(..).map(|(_, t)| t)
    }
}
