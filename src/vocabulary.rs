//! The project's closed vocabularies as types: a word that is stored in SQL, sent on the
//! wire or printed (a job's state, what triggered a run, a decision's delivery) is an enum
//! with exactly one spelling per variant, declared once with [`vocabulary!`](crate::vocabulary).
//!
//! The macro gives each enum `as_str`, `parse`, `Display`, `FromStr`, serde (the same
//! strings as before on the wire) and the SQL conversions of both databases (rusqlite and
//! rust-postgres, as TEXT), so that a stored word that is not in the vocabulary is an error
//! naming the word and the column's type, never a silent default. It is a leaf module: it
//! names no other part of the crate.

/// A word that is not in a vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{word:?} is not a known {what} (expected one of: {expected})")]
pub struct UnknownWord {
    /// The vocabulary (the enum's name).
    pub what: &'static str,
    /// The word found.
    pub word: String,
    /// The words allowed, comma-separated.
    pub expected: String,
}

/// Declares an enum whose variants are spelled as given, everywhere:
///
/// ```
/// outpost::vocabulary! {
///     /// How a job ended.
///     pub enum Outcome { Won = "won", Lost = "lost" }
/// }
/// assert_eq!(Outcome::Won.as_str(), "won");
/// assert_eq!("lost".parse::<Outcome>().unwrap(), Outcome::Lost);
/// assert!("tie".parse::<Outcome>().is_err());
/// ```
#[macro_export]
macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every word of the vocabulary, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The one spelling of this word (SQL, wire, output).
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The word spelled `s`, if it is one.
            pub fn parse(s: &str) -> Result<$name, $crate::vocabulary::UnknownWord> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::vocabulary::UnknownWord {
                        what: stringify!($name),
                        word: s.chars().take(64).collect(),
                        expected: [$($text),+].join(", "),
                    }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        /// A word compares equal to its spelling (tests and filters read naturally).
        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::vocabulary::UnknownWord;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $name::parse(s)
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str> as ::serde::Deserialize>::deserialize(d)?;
                $name::parse(&s).map_err(|_| {
                    <D::Error as ::serde::de::Error>::unknown_variant(&s, &[$($text),+])
                })
            }
        }

        impl ::rusqlite::types::ToSql for $name {
            fn to_sql(&self) -> ::rusqlite::Result<::rusqlite::types::ToSqlOutput<'_>> {
                Ok(::rusqlite::types::ToSqlOutput::Borrowed(
                    ::rusqlite::types::ValueRef::Text(self.as_str().as_bytes()),
                ))
            }
        }

        impl ::rusqlite::types::FromSql for $name {
            fn column_result(v: ::rusqlite::types::ValueRef<'_>) -> ::rusqlite::types::FromSqlResult<Self> {
                $name::parse(v.as_str()?).map_err(|e| ::rusqlite::types::FromSqlError::Other(Box::new(e)))
            }
        }

        impl ::postgres::types::ToSql for $name {
            fn to_sql(
                &self,
                ty: &::postgres::types::Type,
                out: &mut ::postgres::types::private::BytesMut,
            ) -> Result<::postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
                <&str as ::postgres::types::ToSql>::to_sql(&self.as_str(), ty, out)
            }
            fn accepts(ty: &::postgres::types::Type) -> bool {
                <&str as ::postgres::types::ToSql>::accepts(ty)
            }
            ::postgres::types::to_sql_checked!();
        }

        impl<'a> ::postgres::types::FromSql<'a> for $name {
            fn from_sql(
                ty: &::postgres::types::Type,
                raw: &'a [u8],
            ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
                let s = <&str as ::postgres::types::FromSql>::from_sql(ty, raw)?;
                Ok($name::parse(s)?)
            }
            fn accepts(ty: &::postgres::types::Type) -> bool {
                <&str as ::postgres::types::FromSql>::accepts(ty)
            }
        }
    };
}
