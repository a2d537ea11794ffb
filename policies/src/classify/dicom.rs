//! DICOM Part 10 files: only the header is read (with dicom-rs, stopping at the
//! pixel data), for the PatientID (0010,0020). What an image shows cannot be
//! classified from codes, so its content is always `unclassified`.

use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::OpenFileOptions;

use super::patients::{Patients, PatientsBuilder};
use super::ClassifyError;

/// The patients of a DICOM file: its PatientID, if it has a non-empty one.
pub(crate) fn read(bytes: &[u8]) -> Result<Patients, ClassifyError> {
    let object = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Always)
        .read_until(tags::PIXEL_DATA)
        .from_reader(bytes)
        .map_err(|_| ClassifyError::Dicom)?;
    let mut builder = PatientsBuilder::default();
    let element = object
        .element_opt(tags::PATIENT_ID)
        .map_err(|_| ClassifyError::Dicom)?;
    if let Some(element) = element {
        let id = element.to_str().map_err(|_| ClassifyError::Dicom)?;
        // DICOM pads strings to an even length with spaces (or NUL).
        let id = id.trim_matches(|c: char| c == ' ' || c == '\0');
        if !id.is_empty() {
            builder.add(vec![id.to_owned()], Vec::new());
        }
    }
    Ok(builder.build())
}
