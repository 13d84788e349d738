//! Which language a report is written in, so that a reviewer sees it, exports carry it and
//! figures can be broken down by it. Reports reach a field team in the language they were
//! written in (in the disaster-messages data mostly Haitian Creole and French), and the
//! models read some languages better than others: the language is part of judging a score.
//!
//! Detection is `whatlang` (trigram profiles of 69 languages, pure Rust, no model files,
//! microseconds per report): chosen over `lingua`, which is more accurate on short text but
//! ships hundreds of megabytes of n-gram models, too much for a field laptop's bundle. Neither
//! knows Haitian Creole, which whatlang reads as French or another Latin-script language; a
//! report in which Creole's own function words (`mwen`, `nou`, `bezwen`, `pou`, `gen`, ...,
//! none of them French) make up a share of the words is called Creole instead. Codes are
//! ISO 639-3 (`eng`, `fra`, `hat`, `spa`, `por`, `ita`, `ara`); a text too short or too
//! without letters is `None` (exported as empty, shown as "unknown").

/// A detected language.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detected {
    /// ISO 639-3 code.
    pub code: &'static str,
    /// English name.
    pub name: &'static str,
    /// How sure the detector is, 0-1.
    pub confidence: f64,
}

/// Words of Haitian Creole that French (and English, Spanish) do not have.
const CREOLE_WORDS: &[&str] = &[
    "mwen",
    "nou",
    "yo",
    "pou",
    "gen",
    "genyen",
    "bezwen",
    "manje",
    "dlo",
    "tanpri",
    "kounye",
    "yon",
    "moun",
    "kay",
    "paske",
    "ede",
    "lajan",
    "nap",
    "map",
    "kap",
    "ki",
    "nan",
    "ak",
    "pral",
    "konnen",
    "anpil",
    "bagay",
    "fanmi",
    "timoun",
    "travay",
    "lekol",
    "vle",
    "avek",
    "zon",
    "kijan",
    "poukisa",
    "mesi",
    "sitiyasyon",
];

/// Share of a report's words that must be Creole words (and at least two of them).
const CREOLE_SHARE: f64 = 0.2;

/// The language of `text`, or `None` if it cannot be told.
pub fn detect(text: &str) -> Option<Detected> {
    if let Some(c) = creole(text) {
        return Some(c);
    }
    // whatlang's best guess, however sure: on short messages it is rarely "reliable" by its
    // own measure yet right most of the time (see tests/language.rs); the confidence says how sure.
    let info = whatlang::detect(text)?;
    let lang = info.lang();
    Some(Detected {
        code: lang.code(),
        name: lang.eng_name(),
        confidence: info.confidence(),
    })
}

/// Haitian Creole, when enough of the words are Creole's own.
fn creole(text: &str) -> Option<Detected> {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphabetic())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    let hits = words
        .iter()
        .filter(|w| CREOLE_WORDS.contains(&w.as_str()))
        .count();
    let share = hits as f64 / words.len().max(1) as f64;
    (hits >= 2 && share >= CREOLE_SHARE).then_some(Detected {
        code: "hat",
        name: "Haitian Creole",
        confidence: share.min(1.0),
    })
}

#[cfg(test)]
mod tests {
    use super::detect;

    fn code(t: &str) -> Option<&'static str> {
        detect(t).map(|d| d.code)
    }

    #[test]
    fn tells_the_languages_reports_arrive_in() {
        assert_eq!(
            code("We need water and food, the bridge near the school has collapsed."),
            Some("eng")
        );
        assert_eq!(
            code("Nous avons besoin d'eau potable et de nourriture, la maison est détruite."),
            Some("fra")
        );
        assert_eq!(
            code("Mwen bezwen manje ak dlo, tanpri ede nou, kay nou kraze."),
            Some("hat")
        );
        assert_eq!(
            code("Necesitamos agua y comida, el puente cerca de la escuela se ha derrumbado."),
            Some("spa")
        );
        assert_eq!(
            code("Precisamos de água e comida, a ponte perto da escola desabou ontem à noite."),
            Some("por")
        );
        assert_eq!(
            code("Abbiamo bisogno di acqua e cibo, il ponte vicino alla scuola è crollato."),
            Some("ita")
        );
        assert_eq!(
            code("نحن بحاجة إلى الماء والطعام، انهار الجسر بالقرب من المدرسة"),
            Some("ara")
        );
    }

    #[test]
    fn says_nothing_when_it_cannot_tell() {
        assert_eq!(code(""), None);
        assert_eq!(code("12 34 !!"), None);
    }
}
