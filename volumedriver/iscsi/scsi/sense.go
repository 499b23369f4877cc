// Package scsi executes SCSI block commands (SBC-4, SPC-5) against a
// vdisk: the logical unit behind an iSCSI target. It knows nothing of the
// transport: the target hands it a CDB and the data the initiator sent,
// and gets back a status, the data to return, and sense data on refusal.
package scsi

import "fmt"

// Status is a SCSI status byte.
type Status uint8

// SCSI statuses (SAM-5).
const (
	StatusGood                Status = 0x00
	StatusCheckCondition      Status = 0x02
	StatusConditionMet        Status = 0x04
	StatusBusy                Status = 0x08
	StatusReservationConflict Status = 0x18
	StatusTaskSetFull         Status = 0x28
)

// Sense keys (SPC-5 4.4.8).
const (
	SenseNoSense        = 0x0
	SenseNotReady       = 0x2
	SenseMediumError    = 0x3
	SenseHardwareError  = 0x4
	SenseIllegalRequest = 0x5
	SenseUnitAttention  = 0x6
	SenseDataProtect    = 0x7
	SenseAbortedCommand = 0xB
	SenseMiscompare     = 0xE
)

// ASC/ASCQ pairs this package reports.
var (
	ascInvalidOpcode        = [2]byte{0x20, 0x00}
	ascLBAOutOfRange        = [2]byte{0x21, 0x00}
	ascInvalidFieldInCDB    = [2]byte{0x24, 0x00}
	ascInvalidFieldInParams = [2]byte{0x26, 0x00}
	ascParamListLength      = [2]byte{0x1A, 0x00}
	ascWriteProtected       = [2]byte{0x27, 0x00}
	ascUnrecoveredRead      = [2]byte{0x11, 0x00}
	ascWriteError           = [2]byte{0x0C, 0x00}
	ascMiscompareVerify     = [2]byte{0x1D, 0x00}
	ascSavingUnsupported    = [2]byte{0x39, 0x00}
	ascInternalFailure      = [2]byte{0x44, 0x00}
	ascSpaceAllocFailed     = [2]byte{0x27, 0x07}
)

// Sense is what a refused command reports: a sense key and its
// additional sense code and qualifier, and, for an invalid field, where it
// is (SPC-5 sense-key specific field pointer).
type Sense struct {
	Key  uint8
	ASC  uint8
	ASCQ uint8
	// Field, if FieldValid, points at the bad byte (and Bit, if
	// BitValid) of the CDB (InCDB) or of the parameter list.
	FieldValid bool
	InCDB      bool
	BitValid   bool
	Bit        uint8
	Field      uint16
	// Info, if InfoValid, is the information field (the LBA of a
	// miscompare, for instance).
	InfoValid bool
	Info      uint32
}

func (s Sense) Error() string {
	return fmt.Sprintf("scsi sense key 0x%x asc 0x%02x ascq 0x%02x", s.Key, s.ASC, s.ASCQ)
}

func senseOf(key uint8, asc [2]byte) *Sense { return &Sense{Key: key, ASC: asc[0], ASCQ: asc[1]} }

// invalidCDB reports a bad field of the CDB at byte field (and bit, if
// bit >= 0).
func invalidCDB(field int, bit int) *Sense {
	s := senseOf(SenseIllegalRequest, ascInvalidFieldInCDB)
	s.FieldValid, s.InCDB, s.Field = true, true, uint16(field)
	if bit >= 0 {
		s.BitValid, s.Bit = true, uint8(bit)
	}
	return s
}

// invalidParam reports a bad field of the parameter list.
func invalidParam(field int) *Sense {
	s := senseOf(SenseIllegalRequest, ascInvalidFieldInParams)
	s.FieldValid, s.Field = true, uint16(field)
	return s
}

// Fixed returns the sense data in fixed format (response code 0x70,
// current error), 18 bytes.
func (s Sense) Fixed() []byte {
	b := make([]byte, 18)
	b[0] = 0x70
	if s.InfoValid {
		b[0] |= 0x80
		b[3], b[4], b[5], b[6] = byte(s.Info>>24), byte(s.Info>>16), byte(s.Info>>8), byte(s.Info)
	}
	b[2] = s.Key & 0x0F
	b[7] = 10 // additional sense length
	b[12], b[13] = s.ASC, s.ASCQ
	if s.FieldValid {
		b[15] = 0x80
		if s.InCDB {
			b[15] |= 0x40
		}
		if s.BitValid {
			b[15] |= 0x08 | s.Bit&0x07
		}
		b[16], b[17] = byte(s.Field>>8), byte(s.Field)
	}
	return b
}

// InvalidCDB is the sense of a command refused for a bad field at byte
// field of its CDB.
func InvalidCDB(field int) *Sense { return invalidCDB(field, -1) }
