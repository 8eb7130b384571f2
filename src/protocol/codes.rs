//! Request and response codes. An unknown number fails to convert and keeps its value.
//!
//! Each code enum is one table written once in [`wire_codes!`]: the variant, its number,
//! its doc and (for requests) the payload size it must carry. The enum, `ALL`, `as_u16`,
//! `TryFrom<u16>` and `Display` are all made from that table, so a code added there is
//! added everywhere, and one cannot be added anywhere else.

use super::{DecodeError, NAME_LEN, PUBLIC_KEY_LEN};

/// Defines a code enum from one table of `Variant = number` rows (in numeric order,
/// checked at compile time). Request tables add `=> fixed payload size` to each row and
/// the name of the method that returns it.
macro_rules! wire_codes {
    (
        $(#[$meta:meta])*
        pub enum $name:ident (unknown: $unknown:ident) {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum $name {
            $( $(#[$vmeta])* $variant = $value, )+
        }

        impl $name {
            /// Every code, in numeric order.
            pub const ALL: [$name; [$($value),+].len()] = [$(Self::$variant),+];

            /// The number on the wire.
            pub const fn as_u16(self) -> u16 {
                self as u16
            }
        }

        // The table is in strictly increasing order, so `ALL` is too.
        const _: () = {
            let numbers = [$($value),+];
            let mut i = 1;
            while i < numbers.len() {
                assert!(numbers[i - 1] < numbers[i], "codes must be listed in numeric order");
                i += 1;
            }
        };

        impl TryFrom<u16> for $name {
            type Error = DecodeError;
            fn try_from(value: u16) -> Result<Self, Self::Error> {
                match value {
                    $( $value => Ok(Self::$variant), )+
                    _ => Err(DecodeError::$unknown(value)),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{} ({:?})", self.as_u16(), self)
            }
        }
    };
    (
        $(#[$meta:meta])*
        pub enum $name:ident (unknown: $unknown:ident, $(#[$lmeta:meta])* $len_fn:ident) {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal => $len:expr, )+
        }
    ) => {
        wire_codes! {
            $(#[$meta])*
            pub enum $name (unknown: $unknown) {
                $( $(#[$vmeta])* $variant = $value, )+
            }
        }

        impl $name {
            $(#[$lmeta])*
            pub fn $len_fn(self) -> Option<u32> {
                match self {
                    $( Self::$variant => $len, )+
                }
            }
        }
    };
}

wire_codes! {
    /// A request code (client to server).
    pub enum RequestCode (
        unknown: UnknownRequestCode,
        /// The payload size this code must carry, or `None` for 1028 (variable).
        fixed_payload_len
    ) {
        /// 1025: register a new client name.
        Register = 1025 => Some(NAME_LEN as u32),
        /// 1026: send the public key; the server answers with an AES key.
        SendPublicKey = 1026 => Some((NAME_LEN + PUBLIC_KEY_LEN) as u32),
        /// 1027: reconnect with a known name; the server answers with a fresh AES key.
        Reconnect = 1027 => Some(NAME_LEN as u32),
        /// 1028: send an encrypted file.
        SendFile = 1028 => None,
        /// 1029: the checksum matched.
        CrcOk = 1029 => Some(NAME_LEN as u32),
        /// 1030: the checksum did not match; a new 1028 follows (no answer).
        CrcRetry = 1030 => Some(NAME_LEN as u32),
        /// 1031: the checksum did not match for the fourth time; giving up.
        CrcGiveUp = 1031 => Some(NAME_LEN as u32),
    }
}

wire_codes! {
    /// A response code (server to client).
    pub enum ResponseCode (unknown: UnknownResponseCode) {
        /// 2100: registered; here is the new client id.
        Registered = 2100,
        /// 2101: registration failed (the name is taken).
        RegistrationFailed = 2101,
        /// 2102: public key received; here is the AES key, encrypted with it.
        PublicKeyAccepted = 2102,
        /// 2103: file received; here is the cksum of what arrived.
        FileReceived = 2103,
        /// 2104: acknowledged (answer to 1029 and 1031).
        Acknowledged = 2104,
        /// 2105: reconnect accepted; here is a fresh AES key.
        ReconnectAccepted = 2105,
        /// 2106: reconnect denied; register again.
        ReconnectDenied = 2106,
        /// 2107: the server could not handle the request.
        GeneralError = 2107,
    }
}
