-- The core work of the reference pipeline written by hand in DuckDB SQL, for `make bench`:
-- ingest of the three site dialects of `studyflow generate` (nih, hamburg, sao_paulo), typing and
-- row checks, dedupe (identical rows collapse, conflicts drop, newer exports supersede), unit
-- conversion, diary score, steroid daily series with as-of weight, phase anchors and windows,
-- phase assignment and a per-phase summary; the analysis tables are written to Parquet.
-- The rules mirror bench/core_stages.yaml (DOMAIN.md sections 2-5). bench/duckdb_core.py
-- replaces ${DATA}, ${OUT} and ${RUN_DATE} and runs one statement at a time.
-- Not done here, by design of a "careful analyst" version: reject reasons, line numbers and the
-- row-fate reconciliation that studyflow does on top.

-- Cell parsing under each site's dialect. Streams are typed in three steps so that each cell
-- is parsed once: missing-value tokens, then parsing, then the range and allowed-value checks.
CREATE MACRO miss(x) AS
    CASE WHEN trim(x) IN ('', 'NA', 'N/A', 'ND', '.', '-') THEN NULL ELSE trim(x) END;
CREATE MACRO subject_id(site, x) AS
    CASE WHEN site = 'sao_paulo'
         THEN CASE WHEN regexp_full_match(x, '([A-Za-z])\s*-?\s*0*([1-9][0-9]*)')
                   THEN upper(regexp_replace(x, '^([A-Za-z])\s*-?\s*0*([1-9][0-9]*)$', '\1\2')) END
         ELSE CASE WHEN regexp_full_match(x, '([A-Za-z])0*([1-9][0-9]*)')
                   THEN upper(regexp_replace(x, '^([A-Za-z])0*([1-9][0-9]*)$', '\1\2')) END
    END;
CREATE MACRO to_date(site, x) AS CAST(
    CASE site WHEN 'hamburg' THEN try_strptime(x, '%d.%m.%Y')
              WHEN 'sao_paulo' THEN try_strptime(x, ['%m/%d/%Y', '%d-%b-%Y'])
              ELSE try_strptime(x, '%Y-%m-%d') END AS DATE);
CREATE MACRO to_num(site, x) AS
    CASE WHEN site = 'hamburg' AND contains(x, '.') THEN NULL
         WHEN site = 'hamburg' THEN TRY_CAST(replace(x, ',', '.') AS DOUBLE)
         ELSE TRY_CAST(x AS DOUBLE) END;
CREATE MACRO plausible(d) AS
    CASE WHEN d BETWEEN DATE '1990-01-01' AND DATE '${RUN_DATE}' THEN d END;
CREATE MACRO num_in(v, lo, hi) AS CASE WHEN isfinite(v) AND v BETWEEN lo AND hi THEN v END;
CREATE MACRO int_in(v, lo, hi) AS
    CASE WHEN isfinite(v) AND v BETWEEN lo AND hi AND v = floor(v) THEN CAST(v AS BIGINT) END;
-- A value that is written must be usable; a required value must be written.
CREATE MACRO fine(raw, typed) AS (raw IS NULL OR typed IS NOT NULL);
CREATE MACRO given(raw, typed) AS (raw IS NOT NULL AND typed IS NOT NULL);
CREATE MACRO export_date(file) AS
    CAST(regexp_extract(file, '_(\d{4}-\d{2}-\d{2})\.csv$', 1) AS DATE);

-- Raw text of every stream, three dialects, canonical column names.
CREATE VIEW subjects_text AS
SELECT 'nih' AS site, filename AS file, subject_id AS subject, diagnosis AS "group", sex,
       date_of_birth AS birth_date, enrollment_date AS enrol_date,
       discontinuation_date, discontinuation_reason
FROM read_csv('${DATA}/nih/subjects_*.csv', delim = ',', quote = '"', escape = '"', header = true, all_varchar = true, filename = true, ignore_errors = true, union_by_name = true)
UNION ALL
SELECT 'hamburg', filename, "Patient ID", Diagnose, Geschlecht, Geburtsdatum, Einschlussdatum,
       Abbruchdatum, Abbruchgrund
FROM read_csv('${DATA}/hamburg/subjects_*.csv', delim = ';', quote = '"', escape = '"', encoding = 'latin-1', header = true, all_varchar = true, filename = true, ignore_errors = true, union_by_name = true)
UNION ALL
SELECT 'sao_paulo', filename, record_id, "Dx Group", Sex, DOB, "Enrollment Date", "D/C Date",
       "D/C Reason"
FROM read_csv('${DATA}/sao_paulo/subjects_*.csv', delim = '\t', quote = '"', escape = '"', header = true, all_varchar = true, filename = true, ignore_errors = true, union_by_name = true);

CREATE VIEW dosing_text AS
SELECT 'nih' AS site, filename AS file, subject_id AS subject, start_date AS start,
       end_date AS "end", dose_mg, doses_per_day AS per_day, regimen
FROM read_csv('${DATA}/nih/dosing_*.csv', delim = ',', quote = '"', escape = '"', header = true, all_varchar = true, filename = true, ignore_errors = true, union_by_name = true)
UNION ALL
SELECT 'hamburg', filename, "Patient ID", Beginn, Ende, "Dosis (mg)", "Gaben pro Tag", Phase
FROM read_csv('${DATA}/hamburg/dosing_*.csv', delim = ';', quote = '"', escape = '"', encoding = 'latin-1', header = true, all_varchar = true, filename = true, ignore_errors = true, union_by_name = true)
UNION ALL
SELECT 'sao_paulo', filename, Record_ID, Start, Stop, "Dose (mg)", "Doses/Day", Regimen
FROM read_csv('${DATA}/sao_paulo/dosing_*.csv', delim = '\t', quote = '"', escape = '"', header = true, all_varchar = true, filename = true, ignore_errors = true, union_by_name = true);

CREATE VIEW steroids_text AS
SELECT 'nih' AS site, filename AS file, subject_id AS subject, medication AS drug, dose,
       dose_unit, frequency, route, start_date AS start, stop_date AS "end"
FROM read_csv('${DATA}/nih/steroids_*.csv', delim = ',', quote = '"', escape = '"', header = true, all_varchar = true, filename = true, ignore_errors = true, union_by_name = true)
UNION ALL
SELECT 'hamburg', filename, "Patient ID", "Präparat", Dosis, Einheit, "Häufigkeit", Applikation,
       Beginn, Ende
FROM read_csv('${DATA}/hamburg/steroids_*.csv', delim = ';', quote = '"', escape = '"', encoding = 'latin-1', header = true, all_varchar = true, filename = true, ignore_errors = true, union_by_name = true)
UNION ALL
SELECT 'sao_paulo', filename, record_id, Drug, Dose, "Dose Units", Freq, Route, Start, Stop
FROM read_csv('${DATA}/sao_paulo/steroids_*.csv', delim = '\t', quote = '"', escape = '"', header = true, all_varchar = true, filename = true, ignore_errors = true, union_by_name = true);

CREATE VIEW diary_text AS
SELECT 'nih' AS site, filename AS file, subject_id AS subject, date, fever, rash,
       musculoskeletal_pain AS msk_pain, headache, fatigue, organ_specific AS organ
FROM read_csv('${DATA}/nih/diary_*.csv', delim = ',', quote = '"', escape = '"', header = true, all_varchar = true, filename = true, ignore_errors = true, union_by_name = true)
UNION ALL
SELECT 'hamburg', filename, "Patient ID", Datum, Fieber, Ausschlag, "Muskel-/Gelenkschmerz",
       Kopfschmerz, "Müdigkeit", Organbeteiligung
FROM read_csv('${DATA}/hamburg/diary_*.csv', delim = ';', quote = '"', escape = '"', encoding = 'latin-1', header = true, all_varchar = true, filename = true, ignore_errors = true, union_by_name = true)
UNION ALL
SELECT 'sao_paulo', filename, RECORD_ID, "Diary Date", Fever, Rash, "MSK Pain", Headache,
       Fatigue, Organ
FROM read_csv('${DATA}/sao_paulo/diary_*.csv', delim = '\t', quote = '"', escape = '"', header = true, all_varchar = true, filename = true, ignore_errors = true, union_by_name = true);

CREATE VIEW visits_text AS
SELECT 'nih' AS site, filename AS file, subject_id AS subject, visit_date AS date, height,
       height_unit, weight, weight_unit, bmd_z
FROM read_csv('${DATA}/nih/visits_*.csv', delim = ',', quote = '"', escape = '"', header = true, all_varchar = true, filename = true, ignore_errors = true, union_by_name = true)
UNION ALL
SELECT 'hamburg', filename, "Patient ID", Besuchsdatum, "Größe", "Einheit Größe", Gewicht,
       "Einheit Gewicht", "BMD Z-Score"
FROM read_csv('${DATA}/hamburg/visits_*.csv', delim = ';', quote = '"', escape = '"', encoding = 'latin-1', header = true, all_varchar = true, filename = true, ignore_errors = true, union_by_name = true)
UNION ALL
SELECT 'sao_paulo', filename, record_id, "Visit Date", Height, "Ht Units", Weight, "Wt Units",
       "BMD Z"
FROM read_csv('${DATA}/sao_paulo/visits_*.csv', delim = '\t', quote = '"', escape = '"', header = true, all_varchar = true, filename = true, ignore_errors = true, union_by_name = true);

CREATE VIEW labs_text AS
SELECT 'nih' AS site, filename AS file, subject_id AS subject, collection_date AS date,
       test AS analyte, result AS value, units AS unit
FROM read_csv('${DATA}/nih/labs_*.csv', delim = ',', quote = '"', escape = '"', header = true, all_varchar = true, filename = true, ignore_errors = true, union_by_name = true)
UNION ALL
SELECT 'hamburg', filename, "Patient ID", Datum, Parameter, Wert, Einheit
FROM read_csv('${DATA}/hamburg/labs_*.csv', delim = ';', quote = '"', escape = '"', encoding = 'latin-1', header = true, all_varchar = true, filename = true, ignore_errors = true, union_by_name = true)
UNION ALL
SELECT 'sao_paulo', filename, record_id, "Lab Date", "Lab Test", Result, Units
FROM read_csv('${DATA}/sao_paulo/labs_*.csv', delim = '\t', quote = '"', escape = '"', header = true, all_varchar = true, filename = true, ignore_errors = true, union_by_name = true);

CREATE VIEW questionnaires_text AS
SELECT 'nih' AS site, filename AS file, subject_id AS subject, date, instrument, score, unit
FROM read_csv('${DATA}/nih/questionnaires_*.csv', delim = ',', quote = '"', escape = '"', header = true, all_varchar = true, filename = true, ignore_errors = true, union_by_name = true)
UNION ALL
SELECT 'hamburg', filename, "Patient ID", Datum, Fragebogen, Wert, Einheit
FROM read_csv('${DATA}/hamburg/questionnaires_*.csv', delim = ';', quote = '"', escape = '"', encoding = 'latin-1', header = true, all_varchar = true, filename = true, ignore_errors = true, union_by_name = true)
UNION ALL
SELECT 'sao_paulo', filename, Record_Id, Date, Instrument, Score, Units
FROM read_csv('${DATA}/sao_paulo/questionnaires_*.csv', delim = '\t', quote = '"', escape = '"', header = true, all_varchar = true, filename = true, ignore_errors = true, union_by_name = true);

-- Typed and checked rows (a row failing any check is rejected), then dedupe: identical rows of
-- one key in one file collapse, differing ones are all dropped (conflict), and across files the
-- newest export (then the last file path) supersedes.
CREATE TABLE subjects AS
WITH cells AS (
    SELECT site, file, miss(subject) AS subject, miss("group") AS "group", miss(sex) AS sex, miss(birth_date) AS birth_date, miss(enrol_date) AS enrol_date, miss(discontinuation_date) AS discontinuation_date, miss(discontinuation_reason) AS discontinuation_reason
    FROM subjects_text
), parsed AS (
    SELECT *, subject_id(site, subject) AS p_subject, to_date(site, birth_date) AS p_birth_date, to_date(site, enrol_date) AS p_enrol_date, to_date(site, discontinuation_date) AS p_discontinuation_date
    FROM cells
), checked AS (
    SELECT site, file, p_subject AS subject,
           CASE lower("group") WHEN 'candle' THEN 'CANDLE' WHEN 'savi' THEN 'SAVI' WHEN 'other' THEN 'OTHER' END AS "group",
           CASE lower(sex) WHEN 'm' THEN 'M' WHEN 'f' THEN 'F' END AS sex,
           plausible(p_birth_date) AS birth_date,
           plausible(p_enrol_date) AS enrol_date,
           plausible(p_discontinuation_date) AS discontinuation_date,
           discontinuation_reason,
           parsed.subject AS r_subject, parsed."group" AS r_group, parsed.sex AS r_sex, parsed.birth_date AS r_birth_date, parsed.enrol_date AS r_enrol_date, parsed.discontinuation_date AS r_discontinuation_date, parsed.discontinuation_reason AS r_discontinuation_reason
    FROM parsed
), accepted AS (
    SELECT file, export_date(file) AS export_dt, subject,
           struct_pack(site, "group", sex, birth_date, enrol_date, discontinuation_date, discontinuation_reason) AS v
    FROM checked
    WHERE given(r_subject, subject)
      AND given(r_group, "group")
      AND given(r_sex, sex)
      AND given(r_birth_date, birth_date)
      AND given(r_enrol_date, enrol_date)
      AND fine(r_discontinuation_date, discontinuation_date)
      AND fine(r_discontinuation_reason, discontinuation_reason)
), per_file AS (
    SELECT file, export_dt, subject, min(v) AS v
    FROM accepted
    GROUP BY file, export_dt, subject
    HAVING min(v) IS NOT DISTINCT FROM max(v)
), newest AS (
    SELECT subject, arg_max(struct_pack(file, v), struct_pack(export_dt, file)) AS w
    FROM per_file
    GROUP BY subject
)
SELECT w.v.site AS site, w.file AS file, subject, w.v."group" AS "group", w.v.sex AS sex, w.v.birth_date AS birth_date, w.v.enrol_date AS enrol_date, w.v.discontinuation_date AS discontinuation_date, w.v.discontinuation_reason AS discontinuation_reason
FROM newest;

CREATE TABLE dosing AS
WITH cells AS (
    SELECT site, file, miss(subject) AS subject, miss(start) AS start, miss("end") AS "end", miss(dose_mg) AS dose_mg, miss(per_day) AS per_day, miss(regimen) AS regimen
    FROM dosing_text
), parsed AS (
    SELECT *, subject_id(site, subject) AS p_subject, to_date(site, start) AS p_start, to_date(site, "end") AS p_end, to_num(site, dose_mg) AS p_dose_mg, to_num(site, per_day) AS p_per_day
    FROM cells
), checked AS (
    SELECT site, file, p_subject AS subject,
           plausible(p_start) AS start,
           plausible(p_end) AS "end",
           num_in(p_dose_mg, 0.1, 50) AS dose_mg,
           num_in(p_per_day, 1, 6) AS per_day,
           CASE lower(regimen) WHEN 'escalation' THEN 'escalation' WHEN 'optimal' THEN 'optimal' END AS regimen,
           parsed.subject AS r_subject, parsed.start AS r_start, parsed."end" AS r_end, parsed.dose_mg AS r_dose_mg, parsed.per_day AS r_per_day, parsed.regimen AS r_regimen
    FROM parsed
), accepted AS (
    SELECT file, export_date(file) AS export_dt, subject, start,
           struct_pack(site, "end", dose_mg, per_day, regimen) AS v
    FROM checked
    WHERE given(r_subject, subject)
      AND given(r_start, start)
      AND fine(r_end, "end")
      AND given(r_dose_mg, dose_mg)
      AND given(r_per_day, per_day)
      AND given(r_regimen, regimen)
), per_file AS (
    SELECT file, export_dt, subject, start, min(v) AS v
    FROM accepted
    GROUP BY file, export_dt, subject, start
    HAVING min(v) IS NOT DISTINCT FROM max(v)
), newest AS (
    SELECT subject, start, arg_max(struct_pack(file, v), struct_pack(export_dt, file)) AS w
    FROM per_file
    GROUP BY subject, start
)
SELECT w.v.site AS site, w.file AS file, subject, start, w.v."end" AS "end", w.v.dose_mg AS dose_mg, w.v.per_day AS per_day, w.v.regimen AS regimen
FROM newest;

-- Steroid spellings (the reference pipeline's `recode` stage): matched ignoring case and
-- every space, with µ read as u; an order whose drug, frequency or dose unit is not listed is
-- rejected before dedupe.
CREATE MACRO code_key(s) AS
    nullif(regexp_replace(replace(replace(lower(s), 'µ', 'u'), 'μ', 'u'), '\s', '', 'g'), '');
CREATE TABLE drug_names (key VARCHAR, drug VARCHAR, factor DOUBLE);
INSERT INTO drug_names VALUES
    ('prednisone', 'prednisone', 5 / 5), ('prednisolone', 'prednisolone', 5 / 5),
    ('methylprednisolone', 'methylprednisolone', 5 / 4), ('solu-medrol', 'methylprednisolone', 5 / 4),
    ('medrol', 'methylprednisolone', 5 / 4), ('methylpred', 'methylprednisolone', 5 / 4),
    ('triamcinolone', 'triamcinolone', 5 / 4),
    ('hydrocortisone', 'hydrocortisone', 5 / 20), ('cortisol', 'hydrocortisone', 5 / 20),
    ('solu-cortef', 'hydrocortisone', 5 / 20), ('cortisone', 'cortisone', 5 / 25),
    ('dexamethasone', 'dexamethasone', 5 / 0.75), ('decadron', 'dexamethasone', 5 / 0.75),
    ('betamethasone', 'betamethasone', 5 / 0.6), ('deflazacort', 'deflazacort', 5 / 6);
CREATE TABLE frequencies (key VARCHAR, per_day DOUBLE);
INSERT INTO frequencies VALUES ('qd', 1), ('daily', 1), ('bid', 2), ('tid', 3), ('qid', 4),
    ('qod', 0.5), ('everyotherday', 0.5), ('weekly', 1 / 7);
CREATE TABLE dose_units (key VARCHAR, per_kg BOOLEAN);
INSERT INTO dose_units VALUES ('mg', false), ('mg/kg', true);

CREATE TABLE steroids AS
WITH cells AS (
    SELECT site, file, miss(subject) AS subject, miss(drug) AS drug, miss(dose) AS dose, miss(dose_unit) AS dose_unit, miss(frequency) AS frequency, miss(route) AS route, miss(start) AS start, miss("end") AS "end"
    FROM steroids_text
), parsed AS (
    SELECT *, subject_id(site, subject) AS p_subject, to_num(site, dose) AS p_dose, to_date(site, start) AS p_start, to_date(site, "end") AS p_end
    FROM cells
), checked AS (
    SELECT site, file, p_subject AS subject,
           drug,
           num_in(p_dose, 0, 2000) AS dose,
           dose_unit,
           frequency,
           route,
           plausible(p_start) AS start,
           plausible(p_end) AS "end",
           parsed.subject AS r_subject, parsed.drug AS r_drug, parsed.dose AS r_dose, parsed.dose_unit AS r_dose_unit, parsed.frequency AS r_frequency, parsed.route AS r_route, parsed.start AS r_start, parsed."end" AS r_end
    FROM parsed
), coded AS (
    SELECT c.*, d.drug AS drug_std
    FROM checked c
    LEFT JOIN drug_names d ON d.key = code_key(c.drug)
    WHERE code_key(c.drug) IS NULL OR d.drug IS NOT NULL
), accepted AS (
    SELECT file, export_date(file) AS export_dt, subject, drug_std, start,
           struct_pack(site, drug, dose, dose_unit, frequency, route, "end") AS v
    FROM coded
    WHERE (frequency IS NULL OR code_key(frequency) IN (SELECT key FROM frequencies))
      AND (dose_unit IS NULL OR code_key(dose_unit) IN (SELECT key FROM dose_units))
      AND ("end" IS NULL OR start IS NULL OR "end" >= start)
      AND given(r_subject, subject)
      AND given(r_drug, drug)
      AND given(r_dose, dose)
      AND given(r_dose_unit, dose_unit)
      AND given(r_frequency, frequency)
      AND fine(r_route, route)
      AND given(r_start, start)
      AND fine(r_end, "end")
), per_file AS (
    SELECT file, export_dt, subject, drug_std, start, min(v) AS v
    FROM accepted
    GROUP BY file, export_dt, subject, drug_std, start
    HAVING min(v) IS NOT DISTINCT FROM max(v)
), newest AS (
    SELECT subject, drug_std, start, arg_max(struct_pack(file, v), struct_pack(export_dt, file)) AS w
    FROM per_file
    GROUP BY subject, drug_std, start
)
SELECT w.v.site AS site, w.file AS file, subject, w.v.drug AS drug, drug_std, w.v.dose AS dose, w.v.dose_unit AS dose_unit, w.v.frequency AS frequency, w.v.route AS route, start, w.v."end" AS "end"
FROM newest;

CREATE TABLE diary AS
WITH cells AS (
    SELECT site, file, miss(subject) AS subject, miss(date) AS date, miss(fever) AS fever, miss(rash) AS rash, miss(msk_pain) AS msk_pain, miss(headache) AS headache, miss(fatigue) AS fatigue, miss(organ) AS organ
    FROM diary_text
), parsed AS (
    SELECT *, subject_id(site, subject) AS p_subject, to_date(site, date) AS p_date, to_num(site, fever) AS p_fever, to_num(site, rash) AS p_rash, to_num(site, msk_pain) AS p_msk_pain, to_num(site, headache) AS p_headache, to_num(site, fatigue) AS p_fatigue, to_num(site, organ) AS p_organ
    FROM cells
), checked AS (
    SELECT site, file, p_subject AS subject,
           plausible(p_date) AS date,
           int_in(p_fever, 0, 4) AS fever,
           int_in(p_rash, 0, 4) AS rash,
           int_in(p_msk_pain, 0, 4) AS msk_pain,
           int_in(p_headache, 0, 4) AS headache,
           int_in(p_fatigue, 0, 4) AS fatigue,
           int_in(p_organ, 0, 4) AS organ,
           parsed.subject AS r_subject, parsed.date AS r_date, parsed.fever AS r_fever, parsed.rash AS r_rash, parsed.msk_pain AS r_msk_pain, parsed.headache AS r_headache, parsed.fatigue AS r_fatigue, parsed.organ AS r_organ
    FROM parsed
), accepted AS (
    SELECT file, export_date(file) AS export_dt, subject, date,
           struct_pack(site, fever, rash, msk_pain, headache, fatigue, organ) AS v
    FROM checked
    WHERE given(r_subject, subject)
      AND given(r_date, date)
      AND fine(r_fever, fever)
      AND fine(r_rash, rash)
      AND fine(r_msk_pain, msk_pain)
      AND fine(r_headache, headache)
      AND fine(r_fatigue, fatigue)
      AND fine(r_organ, organ)
), per_file AS (
    SELECT file, export_dt, subject, date, min(v) AS v
    FROM accepted
    GROUP BY file, export_dt, subject, date
    HAVING min(v) IS NOT DISTINCT FROM max(v)
), newest AS (
    SELECT subject, date, arg_max(struct_pack(file, v), struct_pack(export_dt, file)) AS w
    FROM per_file
    GROUP BY subject, date
)
SELECT w.v.site AS site, w.file AS file, subject, date, w.v.fever AS fever, w.v.rash AS rash, w.v.msk_pain AS msk_pain, w.v.headache AS headache, w.v.fatigue AS fatigue, w.v.organ AS organ
FROM newest;

CREATE TABLE visits AS
WITH cells AS (
    SELECT site, file, miss(subject) AS subject, miss(date) AS date, miss(height) AS height, miss(height_unit) AS height_unit, miss(weight) AS weight, miss(weight_unit) AS weight_unit, miss(bmd_z) AS bmd_z
    FROM visits_text
), parsed AS (
    SELECT *, subject_id(site, subject) AS p_subject, to_date(site, date) AS p_date, to_num(site, height) AS p_height, to_num(site, weight) AS p_weight, to_num(site, bmd_z) AS p_bmd_z
    FROM cells
), checked AS (
    SELECT site, file, p_subject AS subject,
           plausible(p_date) AS date,
           num_in(p_height, 0.3, 250) AS height,
           height_unit,
           num_in(p_weight, 0.5, 250000) AS weight,
           weight_unit,
           num_in(p_bmd_z, -10, 10) AS bmd_z,
           parsed.subject AS r_subject, parsed.date AS r_date, parsed.height AS r_height, parsed.height_unit AS r_height_unit, parsed.weight AS r_weight, parsed.weight_unit AS r_weight_unit, parsed.bmd_z AS r_bmd_z
    FROM parsed
), accepted AS (
    SELECT file, export_date(file) AS export_dt, subject, date,
           struct_pack(site, height, height_unit, weight, weight_unit, bmd_z) AS v
    FROM checked
    WHERE given(r_subject, subject)
      AND given(r_date, date)
      AND fine(r_height, height)
      AND given(r_height_unit, height_unit)
      AND fine(r_weight, weight)
      AND given(r_weight_unit, weight_unit)
      AND fine(r_bmd_z, bmd_z)
), per_file AS (
    SELECT file, export_dt, subject, date, min(v) AS v
    FROM accepted
    GROUP BY file, export_dt, subject, date
    HAVING min(v) IS NOT DISTINCT FROM max(v)
), newest AS (
    SELECT subject, date, arg_max(struct_pack(file, v), struct_pack(export_dt, file)) AS w
    FROM per_file
    GROUP BY subject, date
)
SELECT w.v.site AS site, w.file AS file, subject, date, w.v.height AS height, w.v.height_unit AS height_unit, w.v.weight AS weight, w.v.weight_unit AS weight_unit, w.v.bmd_z AS bmd_z
FROM newest;

CREATE TABLE labs AS
WITH cells AS (
    SELECT site, file, miss(subject) AS subject, miss(date) AS date, miss(analyte) AS analyte, miss(value) AS value, miss(unit) AS unit
    FROM labs_text
), parsed AS (
    SELECT *, subject_id(site, subject) AS p_subject, to_date(site, date) AS p_date
    FROM cells
), checked AS (
    SELECT site, file, p_subject AS subject,
           plausible(p_date) AS date,
           analyte,
           value,
           unit,
           parsed.subject AS r_subject, parsed.date AS r_date, parsed.analyte AS r_analyte, parsed.value AS r_value, parsed.unit AS r_unit
    FROM parsed
), accepted AS (
    SELECT file, export_date(file) AS export_dt, subject, date, analyte,
           struct_pack(site, value, unit) AS v
    FROM checked
    WHERE given(r_subject, subject)
      AND given(r_date, date)
      AND given(r_analyte, analyte)
      AND given(r_value, value)
      AND given(r_unit, unit)
), per_file AS (
    SELECT file, export_dt, subject, date, analyte, min(v) AS v
    FROM accepted
    GROUP BY file, export_dt, subject, date, analyte
    HAVING min(v) IS NOT DISTINCT FROM max(v)
), newest AS (
    SELECT subject, date, analyte, arg_max(struct_pack(file, v), struct_pack(export_dt, file)) AS w
    FROM per_file
    GROUP BY subject, date, analyte
)
SELECT w.v.site AS site, w.file AS file, subject, date, analyte, w.v.value AS value, w.v.unit AS unit
FROM newest;

CREATE TABLE questionnaires AS
WITH cells AS (
    SELECT site, file, miss(subject) AS subject, miss(date) AS date, miss(instrument) AS instrument, miss(score) AS score, miss(unit) AS unit
    FROM questionnaires_text
), parsed AS (
    SELECT *, subject_id(site, subject) AS p_subject, to_date(site, date) AS p_date, to_num(site, score) AS p_score
    FROM cells
), checked AS (
    SELECT site, file, p_subject AS subject,
           plausible(p_date) AS date,
           instrument,
           num_in(p_score, 0, 100) AS score,
           unit,
           parsed.subject AS r_subject, parsed.date AS r_date, parsed.instrument AS r_instrument, parsed.score AS r_score, parsed.unit AS r_unit
    FROM parsed
), accepted AS (
    SELECT file, export_date(file) AS export_dt, subject, date, instrument,
           struct_pack(site, score, unit) AS v
    FROM checked
    WHERE given(r_subject, subject)
      AND given(r_date, date)
      AND given(r_instrument, instrument)
      AND given(r_score, score)
      AND given(r_unit, unit)
), per_file AS (
    SELECT file, export_dt, subject, date, instrument, min(v) AS v
    FROM accepted
    GROUP BY file, export_dt, subject, date, instrument
    HAVING min(v) IS NOT DISTINCT FROM max(v)
), newest AS (
    SELECT subject, date, instrument, arg_max(struct_pack(file, v), struct_pack(export_dt, file)) AS w
    FROM per_file
    GROUP BY subject, date, instrument
)
SELECT w.v.site AS site, w.file AS file, subject, date, instrument, w.v.score AS score, w.v.unit AS unit
FROM newest;

-- Unit tables (DOMAIN.md 4.1): names and unit spellings to codes and factors. Units match
-- ignoring case and spaces, with µ read as u; the canonical unit is accepted with factor 1.
CREATE MACRO unit_key(u) AS
    nullif(regexp_replace(replace(replace(lower(u), 'µ', 'u'), 'μ', 'u'), '\s', '', 'g'), '');
CREATE TABLE parameter_names (name VARCHAR, code VARCHAR, label VARCHAR, unit VARCHAR,
                              lo DOUBLE, hi DOUBLE);
INSERT INTO parameter_names VALUES
    ('crp', 'CRP', 'C-reactive protein', 'mg/L', NULL, NULL),
    ('c-reactive protein', 'CRP', 'C-reactive protein', 'mg/L', NULL, NULL),
    ('ip10', 'IP10', 'IP-10', 'pg/mL', NULL, NULL),
    ('ip-10', 'IP10', 'IP-10', 'pg/mL', NULL, NULL),
    ('cxcl10 (ip-10)', 'IP10', 'IP-10', 'pg/mL', NULL, NULL),
    ('ifnscore', 'IFNSCORE', 'Interferon score', 'score', NULL, NULL),
    ('ifn score', 'IFNSCORE', 'Interferon score', 'score', NULL, NULL),
    ('ifn-score', 'IFNSCORE', 'Interferon score', 'score', NULL, NULL),
    ('interferon score', 'IFNSCORE', 'Interferon score', 'score', NULL, NULL),
    ('plt', 'PLT', 'Platelets', '10^9/L', NULL, NULL),
    ('platelets', 'PLT', 'Platelets', '10^9/L', NULL, NULL),
    ('thrombozyten', 'PLT', 'Platelets', '10^9/L', NULL, NULL),
    ('alc', 'ALC', 'Absolute lymphocyte count', '10^9/L', NULL, NULL),
    ('lymphocytes, absolute', 'ALC', 'Absolute lymphocyte count', '10^9/L', NULL, NULL),
    ('lymphozyten abs.', 'ALC', 'Absolute lymphocyte count', '10^9/L', NULL, NULL),
    ('hgb', 'HGB', 'Hemoglobin', 'g/dL', NULL, NULL),
    ('hemoglobin', 'HGB', 'Hemoglobin', 'g/dL', NULL, NULL),
    ('hämoglobin', 'HGB', 'Hemoglobin', 'g/dL', NULL, NULL),
    ('creat', 'CREAT', 'Creatinine', 'mg/dL', NULL, NULL),
    ('creatinine', 'CREAT', 'Creatinine', 'mg/dL', NULL, NULL),
    ('kreatinin', 'CREAT', 'Creatinine', 'mg/dL', NULL, NULL),
    ('bkpcr', 'BKPCR', 'BK virus PCR (blood)', 'copies/mL', NULL, NULL),
    ('bk virus pcr (blood)', 'BKPCR', 'BK virus PCR (blood)', 'copies/mL', NULL, NULL),
    ('bkv-pcr', 'BKPCR', 'BK virus PCR (blood)', 'copies/mL', NULL, NULL),
    ('bk pcr', 'BKPCR', 'BK virus PCR (blood)', 'copies/mL', NULL, NULL),
    ('pedsql', 'PEDSQL', 'PedsQL total score', '%', 0, 100),
    ('ptglobal', 'PTGLOBAL', 'Patient global assessment', 'mm', 0, 100),
    ('pt global', 'PTGLOBAL', 'Patient global assessment', 'mm', 0, 100),
    ('pt-global', 'PTGLOBAL', 'Patient global assessment', 'mm', 0, 100),
    ('mdglobal', 'MDGLOBAL', 'Physician global assessment', 'mm', 0, 100),
    ('md global', 'MDGLOBAL', 'Physician global assessment', 'mm', 0, 100),
    ('md-global', 'MDGLOBAL', 'Physician global assessment', 'mm', 0, 100),
    ('height', 'HEIGHT', 'Height', 'cm', 40, 220),
    ('weight', 'WEIGHT', 'Weight', 'kg', 2, 200);
CREATE TABLE unit_factors (code VARCHAR, ukey VARCHAR, factor DOUBLE);
INSERT INTO unit_factors VALUES
    ('CRP', 'mg/l', 1), ('CRP', 'mg/dl', 10),
    ('IP10', 'pg/ml', 1), ('IP10', 'ng/ml', 1000),
    ('IFNSCORE', 'score', 1),
    ('PLT', '10^9/l', 1), ('PLT', 'k/ul', 1), ('PLT', '10^3/ul', 1),
    ('ALC', '10^9/l', 1), ('ALC', 'k/ul', 1), ('ALC', 'cells/ul', 0.001),
    ('HGB', 'g/dl', 1), ('HGB', 'g/l', 0.1), ('HGB', 'mmol/l', 1.611),
    ('CREAT', 'mg/dl', 1), ('CREAT', 'umol/l', 1 / 88.42),
    ('BKPCR', 'copies/ml', 1), ('BKPCR', 'kopien/ml', 1),
    ('PEDSQL', '%', 1),
    ('PTGLOBAL', 'mm', 1), ('PTGLOBAL', 'cm', 10),
    ('MDGLOBAL', 'mm', 1), ('MDGLOBAL', 'cm', 10),
    ('HEIGHT', 'cm', 1), ('HEIGHT', 'm', 100), ('HEIGHT', 'in', 2.54), ('HEIGHT', 'inch', 2.54),
    ('WEIGHT', 'kg', 1), ('WEIGHT', 'g', 0.001), ('WEIGHT', 'lb', 0.45359237),
    ('WEIGHT', 'lbs', 0.45359237);

-- Labs: censored text values (`<0,5` at a decimal-comma site), the site's decimal mark only.
CREATE TABLE labs_std AS
WITH parsed AS (
    SELECT l.*, p.code AS PARAMCD, p.label AS PARAM, p.unit AS AVALU, p.lo, p.hi,
           CASE WHEN (l.site = 'hamburg' AND contains(l.value, '.'))
                  OR (l.site <> 'hamburg' AND contains(l.value, ','))
                THEN NULL
                WHEN l.site = 'hamburg' THEN replace(l.value, ',', '.')
                ELSE l.value END AS dotted
    FROM labs l
    LEFT JOIN parameter_names p ON p.name = lower(trim(l.analyte))
        AND p.code NOT IN ('PEDSQL', 'PTGLOBAL', 'MDGLOBAL', 'HEIGHT', 'WEIGHT')
), valued AS (
    SELECT *,
           TRY_CAST(regexp_extract(dotted, '^(?:([<>])\s*)?([+-]?(?:\d+(?:\.\d*)?|\.\d+))$', 2) AS DOUBLE) AS num,
           nullif(regexp_extract(dotted, '^(?:([<>])\s*)?([+-]?(?:\d+(?:\.\d*)?|\.\d+))$', 1), '') AS CENSOR,
           coalesce(f.factor, CASE WHEN unit_key(unit) = unit_key(AVALU) THEN 1 END) AS factor
    FROM parsed LEFT JOIN unit_factors f ON f.code = parsed.PARAMCD AND f.ukey = unit_key(parsed.unit)
)
SELECT site, file, subject, date, analyte, PARAMCD, PARAM, num * factor AS AVAL, AVALU,
       value AS ORIGVAL, unit AS ORIGU, CENSOR
FROM valued
WHERE PARAMCD IS NOT NULL AND num IS NOT NULL AND factor IS NOT NULL
  AND (lo IS NULL OR num * factor >= lo) AND (hi IS NULL OR num * factor <= hi);

CREATE TABLE questionnaires_std AS
SELECT q.site, q.file, q.subject, q.date, q.instrument, p.code AS PARAMCD, p.label AS PARAM,
       q.score * coalesce(f.factor, 1) AS AVAL, p.unit AS AVALU, CAST(q.score AS VARCHAR) AS ORIGVAL,
       q.unit AS ORIGU
FROM questionnaires q
JOIN parameter_names p ON p.name = lower(trim(q.instrument)) AND p.code IN ('PEDSQL', 'PTGLOBAL', 'MDGLOBAL')
LEFT JOIN unit_factors f ON f.code = p.code AND f.ukey = unit_key(q.unit)
WHERE (f.factor IS NOT NULL OR unit_key(q.unit) = unit_key(p.unit))
  AND q.score * coalesce(f.factor, 1) BETWEEN p.lo AND p.hi;

-- Visits: height and weight to cm and kg; an unknown unit or an implausible converted value
-- rejects the visit; a missing value stays missing.
CREATE TABLE visits_std AS
WITH conv AS (
    SELECT v.*,
           coalesce(fh.factor, CASE WHEN unit_key(v.height_unit) = 'cm' THEN 1 END) AS fh,
           coalesce(fw.factor, CASE WHEN unit_key(v.weight_unit) = 'kg' THEN 1 END) AS fw
    FROM visits v
    LEFT JOIN unit_factors fh ON fh.code = 'HEIGHT' AND fh.ukey = unit_key(v.height_unit)
    LEFT JOIN unit_factors fw ON fw.code = 'WEIGHT' AND fw.ukey = unit_key(v.weight_unit)
)
SELECT * EXCLUDE (fh, fw), height * fh AS height_cm, weight * fw AS weight_kg
FROM conv
WHERE (fh IS NOT NULL OR (height IS NULL AND height_unit IS NULL))
  AND (fw IS NOT NULL OR (weight IS NULL AND weight_unit IS NULL))
  AND (height IS NULL OR height * fh BETWEEN 40 AND 220)
  AND (weight IS NULL OR weight * fw BETWEEN 2 AND 200);

-- Diary score (DOMAIN.md 4.4): mean of the present items when at least 4 of 6 are present.
CREATE TABLE diary_scored AS
SELECT *,
       CASE WHEN n >= 4 THEN (coalesce(fever, 0) + coalesce(rash, 0) + coalesce(msk_pain, 0)
                              + coalesce(headache, 0) + coalesce(fatigue, 0) + coalesce(organ, 0)) / n
       END AS DIARYSCORE,
       n AS NITEMS
FROM (SELECT *, (fever IS NOT NULL)::INT + (rash IS NOT NULL)::INT + (msk_pain IS NOT NULL)::INT
                + (headache IS NOT NULL)::INT + (fatigue IS NOT NULL)::INT
                + (organ IS NOT NULL)::INT AS n
      FROM diary);

-- Steroids (DOMAIN.md 4.2): daily prednisone-equivalent mg and mg/kg/day (spellings above).
-- Each subject's span: first event in any stream to the final visit.
CREATE TABLE span AS
WITH events AS (
    SELECT subject, start AS d FROM steroids UNION ALL SELECT subject, "end" FROM steroids
    UNION ALL SELECT subject, start FROM dosing UNION ALL SELECT subject, "end" FROM dosing
    UNION ALL SELECT subject, date FROM diary UNION ALL SELECT subject, date FROM labs_std
    UNION ALL SELECT subject, date FROM questionnaires_std UNION ALL SELECT subject, date FROM visits_std
), last_visit AS (
    SELECT subject, max(date) AS last_dt FROM visits_std GROUP BY subject
)
SELECT e.subject, min(e.d) AS first_dt, any_value(l.last_dt) AS last_dt
FROM events e JOIN last_visit l ON l.subject = e.subject
WHERE e.d IS NOT NULL
GROUP BY e.subject;

-- Accepted orders, ongoing ones closed the day before the next start of the same drug.
CREATE TABLE orders AS
WITH looked_up AS (
    SELECT s.subject, s.start, s."end", s.dose, d.drug AS cdrug, d.factor, f.per_day, u.per_kg
    FROM steroids s
    LEFT JOIN drug_names d ON d.key = code_key(s.drug)
    LEFT JOIN frequencies f ON f.key = code_key(s.frequency)
    LEFT JOIN dose_units u ON u.key = code_key(s.dose_unit)
), accepted AS (
    SELECT * FROM looked_up
    WHERE cdrug IS NOT NULL AND per_day IS NOT NULL AND per_kg IS NOT NULL AND dose >= 0
      AND isfinite(dose) AND start IS NOT NULL AND ("end" IS NULL OR "end" >= start)
), next_start AS (
    SELECT subject, cdrug, start,
           lead(start) OVER (PARTITION BY subject, cdrug ORDER BY start) AS next_dt
    FROM (SELECT DISTINCT subject, cdrug, start FROM accepted)
)
SELECT a.subject, greatest(a.start, s.first_dt) AS from_dt,
       least(coalesce(a."end", n.next_dt - 1, s.last_dt), s.last_dt) AS to_dt,
       a.dose * a.per_day * a.factor AS mg_day, a.per_kg
FROM accepted a
JOIN next_start n USING (subject, cdrug, start)
JOIN span s ON s.subject = a.subject
WHERE greatest(a.start, s.first_dt) <= least(coalesce(a."end", n.next_dt - 1, s.last_dt), s.last_dt);

CREATE TABLE steroid_daily AS
WITH days AS (
    SELECT subject, CAST(unnest(generate_series(first_dt, last_dt, INTERVAL 1 DAY)) AS DATE) AS ADT
    FROM span
), order_days AS (
    SELECT subject, CAST(unnest(generate_series(from_dt, to_dt, INTERVAL 1 DAY)) AS DATE) AS ADT,
           mg_day, per_kg
    FROM orders
), dose_days AS (
    SELECT subject, ADT,
           sum(CASE WHEN per_kg THEN 0 ELSE mg_day END) AS mg,
           sum(CASE WHEN per_kg THEN mg_day ELSE 0 END) AS mg_per_kg,
           count(*) FILTER (WHERE per_kg) AS n_per_kg,
           count(*) AS NORDERS
    FROM order_days GROUP BY subject, ADT
), weights AS (
    SELECT subject, date AS wdt, avg(weight_kg) AS w
    FROM visits_std WHERE weight_kg > 0 GROUP BY subject, date
), with_before AS (
    SELECT d.*, w.wdt AS wdt_before, w.w AS w_before
    FROM days d ASOF LEFT JOIN weights w ON d.subject = w.subject AND d.ADT >= w.wdt
), with_after AS (
    SELECT d.*, w.wdt AS wdt_after, w.w AS w_after
    FROM with_before d ASOF LEFT JOIN weights w ON d.subject = w.subject AND d.ADT <= w.wdt
), weighed AS (
    SELECT subject, ADT,
           CASE WHEN ADT - wdt_before <= 365 THEN w_before
                WHEN wdt_after - ADT <= 90 THEN w_after END AS WEIGHT_KG,
           CASE WHEN ADT - wdt_before <= 365 THEN wdt_before
                WHEN wdt_after - ADT <= 90 THEN wdt_after END AS WEIGHT_DT
    FROM with_after
)
SELECT w.subject AS USUBJID, w.ADT,
       CASE WHEN coalesce(o.n_per_kg, 0) > 0 THEN o.mg + o.mg_per_kg * w.WEIGHT_KG
            ELSE coalesce(o.mg, 0) END AS PREDMG,
       (CASE WHEN coalesce(o.n_per_kg, 0) > 0 THEN o.mg + o.mg_per_kg * w.WEIGHT_KG
             ELSE coalesce(o.mg, 0) END) / w.WEIGHT_KG AS PREDMGKG,
       w.WEIGHT_KG, w.WEIGHT_DT, coalesce(o.NORDERS, 0) AS NORDERS
FROM weighed w LEFT JOIN dose_days o ON o.subject = w.subject AND o.ADT = w.ADT;

-- Phases (DOMAIN.md 5, W = 90): anchors per subject, then windows.
CREATE TABLE anchors AS
WITH events AS (
    SELECT subject, start AS d FROM steroids UNION ALL SELECT subject, "end" FROM steroids
    UNION ALL SELECT subject, start FROM dosing UNION ALL SELECT subject, "end" FROM dosing
    UNION ALL SELECT subject, date FROM diary UNION ALL SELECT subject, date FROM labs_std
    UNION ALL SELECT subject, date FROM questionnaires_std UNION ALL SELECT subject, date FROM visits_std
), first_event AS (
    SELECT subject, min(d) AS FRSTDT FROM events GROUP BY subject
), doses AS (
    SELECT subject, min(start) AS TRTSDT, min(start) FILTER (WHERE regimen = 'optimal') AS OPTSDT
    FROM dosing GROUP BY subject
), final_visit AS (
    SELECT subject, max(date) AS LSTVSTDT FROM visits_std GROUP BY subject
)
-- Every subject with a subjects row or with records (a rejected demographics row does not
-- leave the subject's records unphased).
SELECT s.subject AS USUBJID, f.FRSTDT, d.TRTSDT, d.OPTSDT, v.LSTVSTDT
FROM (SELECT subject FROM subjects UNION SELECT subject FROM events WHERE subject IS NOT NULL) s
LEFT JOIN first_event f ON f.subject = s.subject
LEFT JOIN doses d ON d.subject = s.subject
LEFT JOIN final_visit v ON v.subject = s.subject;

-- Precedence: final (4), pretreatment (1), escalation (2), optimal (3); a later-listed phase is
-- clipped where an earlier one already took the days. A bound with a missing anchor is empty;
-- days after the final visit are in no phase.
CREATE TABLE phases AS
WITH bounds AS (
    SELECT USUBJID, FRSTDT, TRTSDT, OPTSDT, LSTVSTDT,
           CASE WHEN TRTSDT IS NOT NULL THEN greatest(LSTVSTDT - 89, TRTSDT) END AS a4
    FROM anchors WHERE LSTVSTDT IS NOT NULL
), windows AS (
    SELECT USUBJID, 4 AS APHASEN, 'final' AS APHASE, a4 AS ASTDT, LSTVSTDT AS AENDT FROM bounds
    UNION ALL
    SELECT USUBJID, 1, 'pretreatment', FRSTDT, least(coalesce(TRTSDT - 1, LSTVSTDT), LSTVSTDT)
    FROM bounds
    UNION ALL
    SELECT USUBJID, 2, 'escalation', TRTSDT,
           CASE WHEN a4 <= LSTVSTDT
                THEN least(coalesce(OPTSDT - 1, LSTVSTDT), LSTVSTDT, a4 - 1)
                ELSE least(coalesce(OPTSDT - 1, LSTVSTDT), LSTVSTDT) END
    FROM bounds
    UNION ALL
    SELECT USUBJID, 3, 'optimal', OPTSDT, LSTVSTDT - 90 FROM bounds
)
SELECT USUBJID, APHASEN, APHASE, ASTDT, AENDT, AENDT - ASTDT + 1 AS ADURN
FROM windows WHERE ASTDT IS NOT NULL AND AENDT IS NOT NULL AND ASTDT <= AENDT;

-- Phase assignment and the per-phase summary (n, mean, sd, median, quartiles, min, max).
CREATE TABLE observations_phased AS
SELECT o.USUBJID, o.PARAMCD, o.ADT, o.AVAL, p.APHASEN
FROM (
    SELECT subject AS USUBJID, 'DIARYSCORE' AS PARAMCD, date AS ADT, DIARYSCORE AS AVAL FROM diary_scored
    UNION ALL
    SELECT USUBJID, 'PREDMGKG', ADT, PREDMGKG FROM steroid_daily
    UNION ALL
    SELECT subject, PARAMCD, date, AVAL FROM labs_std
) o
JOIN phases p ON o.USUBJID = p.USUBJID AND o.ADT BETWEEN p.ASTDT AND p.AENDT;

CREATE TABLE phase_summary AS
SELECT USUBJID, APHASEN, PARAMCD, count(AVAL) AS N, avg(AVAL) AS MEAN, stddev_samp(AVAL) AS SD,
       median(AVAL) AS MEDIAN, quantile_cont(AVAL, 0.25) AS Q1, quantile_cont(AVAL, 0.75) AS Q3,
       min(AVAL) AS MIN, max(AVAL) AS MAX
FROM observations_phased
GROUP BY USUBJID, APHASEN, PARAMCD;

-- The analysis tables, as studyflow publishes them.
COPY (SELECT * FROM subjects ORDER BY subject) TO '${OUT}/subjects.parquet' (FORMAT parquet, COMPRESSION zstd);
COPY (SELECT * FROM dosing ORDER BY subject, start) TO '${OUT}/dosing.parquet' (FORMAT parquet, COMPRESSION zstd);
COPY (SELECT * FROM steroids ORDER BY subject, drug, start) TO '${OUT}/steroids.parquet' (FORMAT parquet, COMPRESSION zstd);
COPY (SELECT * FROM diary ORDER BY subject, date) TO '${OUT}/diary.parquet' (FORMAT parquet, COMPRESSION zstd);
COPY (SELECT * FROM visits ORDER BY subject, date) TO '${OUT}/visits.parquet' (FORMAT parquet, COMPRESSION zstd);
COPY (SELECT * FROM labs ORDER BY subject, date, analyte) TO '${OUT}/labs.parquet' (FORMAT parquet, COMPRESSION zstd);
COPY (SELECT * FROM questionnaires ORDER BY subject, date, instrument) TO '${OUT}/questionnaires.parquet' (FORMAT parquet, COMPRESSION zstd);
COPY (SELECT * FROM labs_std ORDER BY subject, date, PARAMCD) TO '${OUT}/labs_std.parquet' (FORMAT parquet, COMPRESSION zstd);
COPY (SELECT * FROM questionnaires_std ORDER BY subject, date, PARAMCD) TO '${OUT}/questionnaires_std.parquet' (FORMAT parquet, COMPRESSION zstd);
COPY (SELECT * FROM visits_std ORDER BY subject, date) TO '${OUT}/visits_std.parquet' (FORMAT parquet, COMPRESSION zstd);
COPY (SELECT * FROM diary_scored ORDER BY subject, date) TO '${OUT}/diary_scored.parquet' (FORMAT parquet, COMPRESSION zstd);
COPY (SELECT * FROM steroid_daily ORDER BY USUBJID, ADT) TO '${OUT}/steroid_daily.parquet' (FORMAT parquet, COMPRESSION zstd);
COPY (SELECT * FROM phases ORDER BY USUBJID, ASTDT) TO '${OUT}/phases.parquet' (FORMAT parquet, COMPRESSION zstd);
COPY (SELECT * FROM phase_summary ORDER BY USUBJID, APHASEN, PARAMCD) TO '${OUT}/phase_summary.parquet' (FORMAT parquet, COMPRESSION zstd);
