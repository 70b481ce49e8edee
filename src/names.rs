//! `names!`: the `FromStr` and `Display` of an option enum from its variants' names, one
//! table for parsing and printing (the CLI's flags and the library's options share them).

/// `names!(Type, "what it is", Variant => "name", ...)`: parsing accepts exactly the names
/// and otherwise fails with the list of them; printing gives a variant's name.
macro_rules! names {
    ($t:ty, $what:literal, $($v:ident => $s:literal),+) => {
        impl ::std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok(<$t>::$v),)+
                    _ => Err(format!(
                        concat!("unknown ", $what, " `{}` (one of: {})"),
                        s,
                        [$($s),+].join(", ")
                    )),
                }
            }
        }
        impl ::std::fmt::Display for $t {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(match self { $(<$t>::$v => $s,)+ })
            }
        }
    };
}
