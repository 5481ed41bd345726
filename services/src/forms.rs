//! XEP-0004 data forms as the MUC and PubSub services use them: building
//! a configuration form and reading a submitted one, with the typed model of
//! xmpp-parsers.

// Items named after XEP-0045/0060/0004 terms (roles, affiliations, form
// fields, namespaces) are documented by those XEPs.
#![allow(missing_docs)]

use crate::error::FormError;
use xmpp_parsers::data_forms::{DataForm, DataFormType, Field, FieldType};
use xmpp_parsers::minidom::Element;

/// Field builders.
pub fn text(var: &str, label: &str, value: &str) -> Field {
    let mut f = Field::new(var, FieldType::TextSingle).with_value(value);
    f.label = Some(label.to_string());
    f
}

pub fn private(var: &str, label: &str, value: &str) -> Field {
    let mut f = Field::new(var, FieldType::TextPrivate).with_value(value);
    f.label = Some(label.to_string());
    f
}

pub fn boolean(var: &str, label: &str, value: bool) -> Field {
    let mut f = Field::new(var, FieldType::Boolean).with_value(if value { "1" } else { "0" });
    f.label = Some(label.to_string());
    f
}

pub fn list(var: &str, label: &str, value: &str, options: &[&str]) -> Field {
    let mut f = Field::new(var, FieldType::ListSingle).with_value(value);
    f.label = Some(label.to_string());
    f.options = options
        .iter()
        .map(|o| xmpp_parsers::data_forms::Option_ {
            label: None,
            value: o.to_string(),
        })
        .collect();
    f
}

/// A `form` type form of `form_type` with `fields`.
pub fn form(form_type: &str, title: &str, fields: Vec<Field>) -> Element {
    let mut f = DataForm::new(DataFormType::Form, form_type, fields);
    f.title = Some(title.to_string());
    f.into()
}

/// A submitted form: its values by field, or why it is not acceptable.
pub struct Submitted {
    pub cancel: bool,
    pub values: Vec<(String, Vec<String>)>,
}

/// Reads the `jabber:x:data` form in `parent` (a submit or a cancel).
pub fn submitted(parent: &Element) -> Result<Option<Submitted>, FormError> {
    let Some(x) = parent.get_child("x", "jabber:x:data") else {
        return Ok(None);
    };
    let form = DataForm::try_from(x.clone()).map_err(|e| FormError::Invalid(e.to_string()))?;
    match form.type_ {
        DataFormType::Cancel => Ok(Some(Submitted {
            cancel: true,
            values: vec![],
        })),
        DataFormType::Submit => Ok(Some(Submitted {
            cancel: false,
            values: form
                .fields
                .into_iter()
                .filter_map(|f| f.var.map(|v| (v, f.values)))
                .filter(|(v, _)| v != "FORM_TYPE")
                .collect(),
        })),
        _ => Err(FormError::WrongType),
    }
}

/// A boolean field's value (XEP-0004: `1`/`true`, `0`/`false`).
pub fn parse_bool(var: &str, values: &[String]) -> Result<bool, FormError> {
    match values.first().map(String::as_str) {
        Some("1") | Some("true") => Ok(true),
        Some("0") | Some("false") | None => Ok(false),
        Some(v) => Err(FormError::NotBoolean {
            var: var.to_string(),
            value: v.to_string(),
        }),
    }
}

/// A numeric field's value.
pub fn parse_number(var: &str, values: &[String], max: usize) -> Result<usize, FormError> {
    let v = values.first().map(String::as_str).unwrap_or("");
    match v.trim().parse::<usize>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(FormError::NotNumber {
            var: var.to_string(),
            value: v.to_string(),
            max,
        }),
    }
}

/// A single text value.
pub fn first(values: &[String]) -> String {
    values.first().cloned().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submitted_forms() {
        let q: Element = "<query xmlns='q'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>t</value></field><field var='a'><value>1</value></field></x></query>".parse().unwrap();
        let s = submitted(&q).unwrap().unwrap();
        assert!(!s.cancel);
        assert_eq!(s.values, vec![("a".to_string(), vec!["1".to_string()])]);
        let c: Element = "<query xmlns='q'><x xmlns='jabber:x:data' type='cancel'/></query>"
            .parse()
            .unwrap();
        assert!(submitted(&c).unwrap().unwrap().cancel);
        let none: Element = "<query xmlns='q'/>".parse().unwrap();
        assert!(submitted(&none).unwrap().is_none());
        let bad: Element = "<query xmlns='q'><x xmlns='jabber:x:data' type='form'/></query>"
            .parse()
            .unwrap();
        assert!(submitted(&bad).is_err());
        assert!(parse_bool("b", &["yes".into()]).is_err());
        assert!(parse_bool("b", &["true".into()]).unwrap());
        assert_eq!(parse_number("n", &["12".into()], 100), Ok(12));
        assert!(parse_number("n", &["x".into()], 100).is_err());
        assert!(parse_number("n", &["1000".into()], 100).is_err());
    }
}
