//! The tag rules of the frames a client sends, as a small pure state the server feeds each
//! decoded header to. Why strictly increasing tags: the server tells a late frame of a
//! finished request from a new one with no table of old tags.

use super::{CONNECTION_TAG, FrameError, FrameHeader, Role};

/// What the server knows of the client's tags on one connection: the highest request tag
/// so far and the tag of the open put, if any. The rules (docs/protocol-v4.md, "Tags"):
///
/// - `HELLO` carries tag 0;
/// - a new request carries a tag greater than every tag the client used before (so the
///   first is at least 1);
/// - `DATA` and `PUT_END` carry the tag of the open put: the latest request, when it was a
///   `PUT_BEGIN` whose `PUT_END` has not come yet;
/// - `COMMIT` and `DISCARD` may carry any tag (the server answers a wrong one `not_found`),
///   and, like any other request, end the body of the put before them.
///
/// Whether the put was accepted (`PutBody`) or refused (`Dropping`) is the state machine's
/// business; the tags are the same either way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagCheck {
    last: u32,
    open_put: Option<u32>,
}

impl TagCheck {
    /// The state at the start of a connection: no tag used but the connection's own.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks the tag of the next frame the client sent and records it. A refused frame
    /// changes nothing (the connection ends anyway).
    pub fn check(&mut self, header: &FrameHeader) -> Result<(), FrameError> {
        let (frame_type, tag) = (header.frame_type(), header.tag());
        match frame_type.role() {
            Role::Connection if tag != CONNECTION_TAG => {
                Err(FrameError::TagNotZero { frame_type, tag })
            }
            Role::Connection => Ok(()),
            Role::Request if tag <= self.last => {
                Err(FrameError::TagNotIncreasing { frame_type, tag, last: self.last })
            }
            Role::Request => {
                self.last = tag;
                self.open_put = (frame_type == super::FrameType::PutBegin).then_some(tag);
                Ok(())
            }
            Role::PutBody if self.open_put != Some(tag) => {
                Err(FrameError::TagNotOpenPut { frame_type, tag, open_put: self.open_put })
            }
            Role::PutBody => {
                if frame_type == super::FrameType::PutEnd {
                    self.open_put = None;
                }
                Ok(())
            }
            Role::Held => {
                self.open_put = None;
                Ok(())
            }
            Role::Answer => Err(FrameError::WrongDirection {
                raw_type: frame_type.as_u16(),
                reader: super::Side::Server,
            }),
        }
    }

    /// The highest request tag so far (0 before the first request).
    pub fn last(&self) -> u32 {
        self.last
    }

    /// The tag of the put whose body is being sent, if any.
    pub fn open_put(&self) -> Option<u32> {
        self.open_put
    }
}
