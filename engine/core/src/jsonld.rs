//! The default JSON-LD `@context` of a table: W3C SOSA/SSN terms.
//!
//! Its BLAKE3 hash goes into the `context` field of every block header of the table, so a
//! block commits to the meaning of its columns as well as to their values.

/// The default context document. Rows export as `sosa:Observation`s: `time` is
/// `sosa:resultTime`, the series tags identify the sensor (`sosa:madeBySensor`), each field is
/// an `sosa:observedProperty` with its `sosa:hasSimpleResult`.
pub fn default_context() -> &'static str {
    r#"{"@context":{"sosa":"http://www.w3.org/ns/sosa/","ssn":"http://www.w3.org/ns/ssn/","xsd":"http://www.w3.org/2001/XMLSchema#","annals":"urn:annals:","Observation":"sosa:Observation","time":{"@id":"sosa:resultTime","@type":"xsd:dateTime"},"sensor":{"@id":"sosa:madeBySensor","@type":"@id"},"property":{"@id":"sosa:observedProperty","@type":"@id"},"result":"sosa:hasSimpleResult","tx_id":"annals:txId","table":"annals:table"}}"#
}
