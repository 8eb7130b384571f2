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
    /// The frame type of a successful answer (the last frame of a multi-frame one).
    pub answer: FrameType,
    /// Where a multi-frame answer is: which frames may come before its last.
    pub stream: Stream,
}

/// The frames of a multi-frame answer before its last (docs/protocol-v4.md, "State
/// machine", "What answers what").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// A one-frame answer.
    Single,
    /// `LIST`: any number of `LIST_ENTRIES`, then `LIST_END` or `ERROR`.
    List,
    /// `GET`: `GET_BEGIN` or `ERROR` first; after `GET_BEGIN`, `DATA` until `GET_END` or
    /// `ERROR`.
    Get {
        /// Whether `GET_BEGIN` came.
        begun: bool,
    },
}

impl Awaited {
    /// The answer awaited by a request of type `request` under `tag`; `None` for frames
    /// that are not answered on their own (`DATA`, `PUT_END`: the put's answer is awaited
    /// from its `PUT_BEGIN`).
    pub fn of(request: FrameType, tag: u32) -> Option<Awaited> {
        let stream = match request {
            FrameType::List => Stream::List,
            FrameType::Get => Stream::Get { begun: false },
            _ => Stream::Single,
        };
        let answer = match request {
            FrameType::Hello => FrameType::Welcome,
            FrameType::Register | FrameType::Upgrade => FrameType::Registered,
            FrameType::PutBegin => FrameType::PutReceived,
            FrameType::Commit => FrameType::Committed,
            FrameType::Discard => FrameType::Discarded,
            FrameType::ResumeQuery => FrameType::ResumeState,
            FrameType::Rm => FrameType::Removed,
            FrameType::List => FrameType::ListEnd,
            FrameType::Get => FrameType::GetEnd,
            _ => return None,
        };
        Some(Awaited { tag, answer, stream })
    }

    /// Whether `got` (with the request's tag) may come next as a frame before the last.
    fn part(&mut self, got: FrameType) -> bool {
        match (&mut self.stream, got) {
            (Stream::List, FrameType::ListEntries) => true,
            (Stream::Get { begun: begun @ false }, FrameType::GetBegin) => {
                *begun = true;
                true
            }
            (Stream::Get { begun: true }, FrameType::GetData) => true,
            _ => false,
        }
    }

    /// Whether `got` (with the request's tag) may come next as the last frame.
    fn last(&self, got: FrameType) -> bool {
        match self.stream {
            _ if got == FrameType::Error => true,
            Stream::Get { begun: false } => false,
            _ => got == self.answer,
        }
    }
}

/// Where a server frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// It answers the oldest request (its answer type or an `ERROR` with its tag), or is
    /// the last frame of its multi-frame answer: the request is done.
    Answer,
    /// A frame of the oldest request's multi-frame answer before its last: the request
    /// stays due ([`Pending::front`] is what it goes to).
    Part,
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
        Some(Awaited { stream: Stream::List, tag, .. }) => {
            format!("LIST_ENTRIES, LIST_END or ERROR with tag {tag} was due")
        }
        Some(Awaited { stream: Stream::Get { begun: false }, tag, .. }) => {
            format!("GET_BEGIN or ERROR with tag {tag} was due")
        }
        Some(Awaited { stream: Stream::Get { begun: true }, tag, .. }) => {
            format!("DATA, GET_END or ERROR with tag {tag} was due")
        }
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
        if let Some((a, _)) = self.queue.front_mut()
            && a.tag == tag
        {
            if a.last(got) {
                return Ok((Route::Answer, self.queue.pop_front().map(|(_, t)| t)));
            }
            if a.part(got) {
                return Ok((Route::Part, None));
            }
        }
        let awaited = self.queue.front().map(|(a, _)| *a);
        match awaited {
            _ if got == FrameType::Error && tag == CONNECTION_TAG => Ok((Route::Connection, None)),
            awaited => Err(Unexpected { got, tag, awaited }),
        }
    }

    /// What is attached to the oldest request (where a [`Route::Part`] goes).
    pub fn front(&self) -> Option<&T> {
        self.queue.front().map(|(_, t)| t)
    }

    /// Everything still due, oldest first (when the connection ends).
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.queue.drain(..).map(|(_, t)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(frame_type: FrameType, tag: u32) -> FrameHeader {
        let len = if frame_type == FrameType::GetData { 1 } else { 0 };
        FrameHeader::new(frame_type, tag, len).unwrap()
    }

    #[test]
    fn a_get_answer_is_begin_data_end_and_nothing_else_in_between() {
        let mut pending = Pending::default();
        pending.push(Awaited::of(FrameType::Get, 1).unwrap(), "get");
        pending.push(Awaited::of(FrameType::Rm, 2).unwrap(), "rm");
        assert!(pending.route(&header(FrameType::GetData, 1)).is_err(), "DATA before GET_BEGIN");
        assert!(pending.route(&header(FrameType::GetEnd, 1)).is_err(), "GET_END before GET_BEGIN");
        assert_eq!(pending.route(&header(FrameType::GetBegin, 1)), Ok((Route::Part, None)));
        assert!(pending.route(&header(FrameType::GetBegin, 1)).is_err(), "a second GET_BEGIN");
        assert_eq!(pending.route(&header(FrameType::GetData, 1)), Ok((Route::Part, None)));
        assert!(pending.route(&header(FrameType::Removed, 2)).is_err(), "out of order");
        assert_eq!(pending.front(), Some(&"get"));
        assert_eq!(pending.route(&header(FrameType::GetEnd, 1)), Ok((Route::Answer, Some("get"))));
        assert_eq!(pending.route(&header(FrameType::Removed, 2)), Ok((Route::Answer, Some("rm"))));
    }

    #[test]
    fn a_listing_is_entries_then_its_end_or_an_error() {
        let mut pending = Pending::default();
        pending.push(Awaited::of(FrameType::List, 3).unwrap(), ());
        for _ in 0..3 {
            assert_eq!(pending.route(&header(FrameType::ListEntries, 3)), Ok((Route::Part, None)));
        }
        assert!(pending.route(&header(FrameType::GetData, 3)).is_err());
        assert_eq!(pending.route(&header(FrameType::Error, 3)), Ok((Route::Answer, Some(()))));
        assert!(pending.is_empty());
    }
}
